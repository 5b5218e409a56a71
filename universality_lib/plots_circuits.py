"""The figures of chapter 6 (the Off-by-One motif),
now :mod:`universality_lib.plots.off_by_one`; this module name is kept so
that ``from universality_lib.plots_circuits import ...`` keeps working."""
from .plots.off_by_one import *  # noqa: F401,F403
from .plots.off_by_one import __all__  # noqa: F401
