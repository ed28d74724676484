"""The inference form of every model family: one function, one ``fuse`` signature.

Each family's ``model.fuse(input_size=None)`` works in place: it folds BatchNorms into the convs before them
(``qtvit.layers.fold``), turns the remaining ones into per-channel affines, and, where the model has positional
embeddings stored for one size (EfficientViT/QT-ViT), caches them resized for ``input_size``.
"""
from __future__ import annotations

import copy

import torch.nn as nn

from .._utils import parse_size

__all__ = ["inference_form"]


def inference_form(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> nn.Module:
    """An eval-mode fused copy of ``model`` for inputs of ``input_size`` (H, W); outputs equal the eager model's.

    ``input_size=None`` keeps every input size valid (QT-ViT then resizes its positional embeddings on the fly); a
    size also caches the resized embeddings, so that copy only accepts that size. A model without ``fuse`` comes
    back as an eval-mode copy; ``model`` itself is not changed.
    """
    size = None if input_size is None else parse_size(input_size)
    fused = copy.deepcopy(model).eval()
    fuse = getattr(fused, "fuse", None)
    if fuse is None:
        return fused
    out = fuse(size)
    return out if isinstance(out, nn.Module) else fused
