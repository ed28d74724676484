"""Weight initialisation shared by the model families."""
from __future__ import annotations

import torch.nn as nn

from .conv import ConvBlock
from .lite_mla import EfficientViTBlock

__all__ = ["trunc_normal_init_", "zero_init_last_"]


def trunc_normal_init_(m: nn.Module, std: float = 0.02) -> None:
    """The official EfficientViT, QT-ViT and L2ViT init ("trunc_normal@0.02"): conv and linear weights drawn from a
    truncated normal, biases zero; norms keep (1, 0). Use as ``model.apply(trunc_normal_init_)``."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def zero_init_last_(model: nn.Module) -> int:
    """Zero the scale of the last norm of every residual branch (EfficientViT's ``--last_gamma 0``, timm's
    ``zero_init_last``): each residual block starts as the identity, so a deep stack trains like a shallow one at
    first. Covers the residual conv blocks and the attention branch (``LiteMLA.proj``) of EfficientViT blocks.
    Returns the number of norms zeroed."""
    norms = []
    for m in model.modules():
        if isinstance(m, ConvBlock) and m.residual:
            norms.append(m.convs()[-1].norm)
        elif isinstance(m, EfficientViTBlock):
            norms.append(m.attn.proj.norm)
    norms = [n for n in norms if getattr(n, "weight", None) is not None]
    for n in norms:
        nn.init.zeros_(n.weight)
    return len(norms)
