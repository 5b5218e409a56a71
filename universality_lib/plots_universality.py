"""The figures of chapter 4 (is similarity universality?),
now :mod:`universality_lib.plots.universality`; this module name is kept so
that ``from universality_lib.plots_universality import ...`` keeps working."""
from .plots.universality import *  # noqa: F401,F403
from .plots.universality import __all__  # noqa: F401
