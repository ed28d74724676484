"""Deprecated home of the figures, which moved to ``qtvit.tools.figures``: this module only re-exports them."""
import warnings

from .tools.figures import *  # noqa: F401,F403
from .tools.figures import __all__  # noqa: F401

warnings.warn("qtvit.viz moved to qtvit.tools.figures; import it from there", DeprecationWarning, stacklevel=2)
