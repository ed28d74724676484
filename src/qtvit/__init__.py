"""qtvit: QT-ViT, EfficientViT and L2ViT, their attention kernels, training, benchmarks and export."""
from .attention import attend, attention_map, create_kernel, list_kernels
from .models import create_model, list_models
from .models._pretrained import save_pretrained
from ._version import __version__

__all__ = ["attend", "attention_map", "create_kernel", "list_kernels", "create_model", "list_models", "save_pretrained",
           "__version__"]
