"""The figures of chapter 3 (feature similarity),
now :mod:`universality_lib.plots.similarity`; this module name is kept so
that ``from universality_lib.plots_similarity import ...`` keeps working."""
from .plots.similarity import *  # noqa: F401,F403
from .plots.similarity import __all__  # noqa: F401
