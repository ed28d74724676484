"""Figures: attention maps of several kernels, top-1 against latency (Pareto), segmentation predictions."""
from .attention import *  # noqa: F401,F403
from .attention import __all__  # noqa: F401
