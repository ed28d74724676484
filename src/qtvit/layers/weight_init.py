"""Weight initialisation shared by the model families."""
from __future__ import annotations

import torch.nn as nn

__all__ = ["trunc_normal_init_"]


def trunc_normal_init_(m: nn.Module, std: float = 0.02) -> None:
    """The official EfficientViT, QT-ViT and L2ViT init ("trunc_normal@0.02"): conv and linear weights drawn from a
    truncated normal, biases zero; norms keep (1, 0). Use as ``model.apply(trunc_normal_init_)``."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
