"""qtvit: QT-ViT, EfficientViT and L2ViT, their attention kernels, training, benchmarks and export."""
from ._threads import set_cli_wait_policy

set_cli_wait_policy()  # before torch loads OpenMP, which reads the policy once (the qtvit command only)

from .attention import attend, attention_map, create_kernel, list_kernels  # noqa: E402
from .models import create_model, list_models, register_model, unregister_model  # noqa: E402
from .models._pretrained import save_pretrained  # noqa: E402
from ._version import __version__  # noqa: E402

__all__ = ["attend", "attention_map", "create_kernel", "list_kernels", "create_model", "list_models", "register_model",
           "unregister_model", "save_pretrained", "__version__"]
