"""The model zoo: EfficientViT (MIT), QT-ViT-1…6 and L2ViT, built by name with `create_model`."""
from ._registry import list_models, model_entrypoint, register_model
from ._builder import create_model
from . import efficientvit, l2vit  # noqa: F401  (registers the families)

__all__ = ["create_model", "list_models", "model_entrypoint", "register_model"]
