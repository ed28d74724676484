"""Resizing of feature maps, positional embeddings and logits (``align_corners=False``, as the official code), with
the bicubic resize written as two small matrix products.

A separable, linear resize of a (..., h, w) tensor is ``Mh @ x @ Mw^T``, where M is the identity resized along one
axis (``interpolation_matrix``). For bicubic this is both faster and easier to export than ``F.interpolate``:

* on CPU, torch's bicubic kernel is slow: resizing (8, 64, 12, 12) to 24 x 24 (EfficientViT-Seg's head at 192 px),
  forward and backward, took 5.1 ms against 0.6 ms for the matrices (2 threads, median of 12; 10.5 against 1.0 ms
  with 128 channels);
* a traced output size stays symbolic: ONNX gets one dynamic ``Resize`` of a tiny identity matrix and two MatMuls,
  which onnxruntime runs fast, instead of a dynamic bicubic ``Resize`` of the whole tensor, which it runs slowly
  (548 instead of 1136 onnxruntime nodes for qtvit_1 against building M from ``arange`` and comparisons).

Bilinear resizes keep ``F.interpolate``: for the logits of a segmentation loss (channels-last, 11 classes, 24 -> 192
px) torch's kernel measured as fast as the matrices. So does ``resize_to`` in a trace, where the input's size must
stay free (``separable_resize`` takes it as a constant: right for a stored embedding, not for a feature map).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["interpolation_matrix", "separable_resize", "resize_to"]


def interpolation_matrix(n_out, n_in: int, mode: str = "bicubic", dtype: torch.dtype = torch.float32,
                         device: Optional[torch.device] = None) -> torch.Tensor:
    """The (n_out, n_in) matrix M with ``M @ x`` = ``F.interpolate(mode, align_corners=False)`` of x's first axis
    from n_in to n_out samples (sources clamped at the borders, no antialias): the n_in x n_in identity resized.
    Along the second axis the size is kept, where the interpolation weights are exactly 1 and 0."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode=mode, align_corners=False).flatten(0, 2)


def separable_resize(x: torch.Tensor, h, w, mode: str = "bicubic") -> torch.Tensor:
    """``F.interpolate(x, (h, w), mode=mode, align_corners=False)`` of a (..., h0, w0) tensor as ``Mh @ x @ Mw^T``
    (exact up to rounding: the resize is separable and linear; within 3e-15 in float64). The result is contiguous."""
    h0, w0 = (int(n) for n in x.shape[-2:])  # the input's size: a constant in an exported graph
    mh = interpolation_matrix(h, h0, mode, x.dtype, x.device)
    mw = interpolation_matrix(w, w0, mode, x.dtype, x.device)
    return mh @ x @ mw.transpose(0, 1)


def resize_to(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """``x`` (B, C, h, w) resized to ``size`` (H, W) with ``align_corners=False`` (bicubic by ``separable_resize``);
    the identity when it already has that size (except while tracing, where that test would freeze into the graph).
    Half-precision inputs are resized in float32 (as the official code) and cast back."""
    if not torch.jit.is_tracing() and tuple(x.shape[-2:]) == tuple(size):
        return x
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if mode == "bicubic" and not torch.jit.is_tracing():  # a trace keeps F.interpolate: its input size is free
        y = separable_resize(y, size[0], size[1], mode)
    else:
        y = F.interpolate(y, size=tuple(size), mode=mode, align_corners=False)
    return y.to(x.dtype)
