"""``python -m universality_lib.book ...``: the same as ``python -m universality_lib book ...`` (kept as an alias;
one CLI, in :mod:`universality_lib.cli`)."""
import sys

from ..cli import main

sys.exit(main(["book", *sys.argv[1:]]))
