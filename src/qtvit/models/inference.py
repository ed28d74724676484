"""The inference form of every model family: one function, one ``fuse`` signature.

Each family's ``model.fuse(input_size=None)`` works in place: it folds BatchNorms into the convs before them
(``qtvit.layers.fold``), turns the remaining ones into per-channel affines, and, where the model has positional
embeddings stored for one size (EfficientViT/QT-ViT), caches them resized for ``input_size``.

A model built around such a part without a ``fuse`` of its own (torchvision's detectors around ``BackboneFPN``) has
that part fused for every input size: the size the part sees is not the model's input size (a detector resizes and
pads its images first), and the size-free form differs from a cached one only by QT-ViT's embedding resize, two
small matrix products per attention stage.
"""
from __future__ import annotations

import copy
import inspect

import torch.nn as nn

from .._utils import parse_size

__all__ = ["inference_form"]


def _model_fuse(module: nn.Module):
    """The family's ``fuse(input_size)`` of a module, or None (layers have a ``fuse()`` of their own, without size,
    which their model's calls)."""
    fuse = getattr(module, "fuse", None)
    return fuse if callable(fuse) and "input_size" in inspect.signature(fuse).parameters else None


def _fuse_parts(model: nn.Module) -> None:
    """In place: ``fuse(None)`` on the outermost submodules that have the family's ``fuse(input_size)``."""
    for name, child in list(model.named_children()):
        fuse = _model_fuse(child)
        if fuse is None:
            _fuse_parts(child)
            continue
        out = fuse(None)
        if isinstance(out, nn.Module) and out is not child:
            setattr(model, name, out)


def inference_form(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> nn.Module:
    """An eval-mode fused copy of ``model`` for inputs of ``input_size`` (H, W); outputs equal the eager model's.

    ``input_size=None`` keeps every input size valid (QT-ViT then resizes its positional embeddings on the fly); a
    size also caches the resized embeddings, so that copy only accepts that size. A model without ``fuse`` comes
    back as an eval-mode copy with its parts that have one fused for every size (a detector's backbone); ``model``
    itself is not changed.
    """
    size = None if input_size is None else parse_size(input_size)
    fused = copy.deepcopy(model).eval()
    fuse = _model_fuse(fused)
    if fuse is None:
        _fuse_parts(fused)
        return fused
    out = fuse(size)
    return out if isinstance(out, nn.Module) else fused
