"""The model zoo: EfficientViT (MIT), QT-ViT-1…6 and L2ViT, built by name with `create_model`."""
from ._registry import list_models, model_entrypoint, register_model, unregister_model
from ._builder import build_model_with_cfg, create_model, set_pretrained_cfg
from .inference import inference_form
from . import detection, efficientvit, l2vit, segmentation, segmentation_scenes  # noqa: F401  (registers them)

__all__ = ["build_model_with_cfg", "create_model", "inference_form", "list_models", "model_entrypoint",
           "register_model", "unregister_model", "set_pretrained_cfg"]
