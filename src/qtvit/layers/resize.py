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

import functools
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Resize", "interpolation_matrix", "resize_matrices", "separable_resize", "resize_embedding", "resize_to"]

Resize = tuple[torch.Tensor, torch.Tensor]  # the interpolation matrices (H, h0) and (w0, W) of a separable resize


def interpolation_matrix(n_out, n_in: int, mode: str = "bicubic", dtype: torch.dtype = torch.float32,
                         device: Optional[torch.device] = None, *, transposed: bool = False) -> torch.Tensor:
    """The (n_out, n_in) matrix M with ``M @ x`` = ``F.interpolate(mode, align_corners=False)`` of x's first axis
    from n_in to n_out samples (sources clamped at the borders, no antialias): the n_in x n_in identity resized.
    Along the other axis the size is kept, where the interpolation weights are exactly 1 and 0. ``transposed``:
    M^T (n_in, n_out), the identity resized along its columns (no Transpose in a traced graph)."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[None, None]
    size = (n_in, n_out) if transposed else (n_out, n_in)
    return F.interpolate(eye, size=size, mode=mode, align_corners=False).flatten(0, 2)


def resize_matrices(h, w, h0: int, w0: int, mode: str = "bicubic", dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Resize:
    """(Mh, Mw^T), (h, h0) and (w0, w): ``Mh @ x @ Mw^T`` resizes a (..., h0, w0) tensor to (h, w)."""
    return (interpolation_matrix(h, h0, mode, dtype, device),
            interpolation_matrix(w, w0, mode, dtype, device, transposed=True))


def separable_resize(x: torch.Tensor, h, w, mode: str = "bicubic") -> torch.Tensor:
    """``F.interpolate(x, (h, w), mode=mode, align_corners=False)`` of a (..., h0, w0) tensor as ``Mh @ x @ Mw^T``
    (exact up to rounding: the resize is separable and linear; within 3e-15 in float64). The result is contiguous."""
    h0, w0 = (int(n) for n in x.shape[-2:])  # the input's size: a constant in an exported graph
    mh, mw_t = resize_matrices(h, w, h0, w0, mode, x.dtype, x.device)
    return mh @ x @ mw_t


def _resize_embedding(pe: torch.Tensor, mh: torch.Tensor, mw_t: torch.Tensor) -> torch.Tensor:
    # `&`, not `and`: TorchScript compiles `and` to two nested Ifs (and a tuple comparison to a 2-element condition)
    if (mh.shape[0] == pe.shape[-2]) & (mw_t.shape[1] == pe.shape[-1]):
        return pe
    return mh @ pe @ mw_t


@functools.cache
def _scripted_resize_embedding() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, as the tracer the export uses
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_resize_embedding)


def resize_embedding(pe: torch.Tensor, mh: torch.Tensor, mw_t: torch.Tensor) -> torch.Tensor:
    """A stored (..., h0, w0) embedding resized by the interpolation matrices ``mh`` (H, h0) and ``mw_t`` (w0, W)
    (``interpolation_matrix(W, w0, transposed=True)``): ``mh @ pe @ mw_t``, or ``pe`` itself when (H, W) = (h0, w0),
    where the matrices are the identity.

    While tracing, the test is kept in the graph (a scripted function: an ONNX ``If``), so one exported graph skips
    the resize at the stored size and runs it at any other: qtvit_1 at 224 px in onnxruntime ran ~5 % faster so
    (docs/benchmarks.md)."""
    if torch.jit.is_tracing():
        return _scripted_resize_embedding()(pe, mh, mw_t)
    return _resize_embedding(pe, mh, mw_t)


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
