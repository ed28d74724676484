"""Deprecated home of the ONNX export, which moved to ``qtvit.tools.export``: this module only re-exports it."""
import warnings

from .tools.export import *  # noqa: F401,F403
from .tools.export import __all__  # noqa: F401

warnings.warn("qtvit.export moved to qtvit.tools.export; import it from there", DeprecationWarning, stacklevel=2)
