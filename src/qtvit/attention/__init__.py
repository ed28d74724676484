"""Attention kernels: ``attend(q, k, v, kernel="qt")`` and the explicit maps behind it.

>>> import torch, qtvit
>>> q = k = v = torch.randn(1, 2, 196, 16)
>>> qtvit.attend(q, k, v, kernel="qt").shape
torch.Size([1, 2, 196, 16])
"""
from __future__ import annotations

import difflib
from typing import Any

from torch import Tensor

from .core import DEFAULT_CHUNK_SIZE, check_qkv, linear_attention, softmax_attention
from .kernels import KERNELS, AttentionKernel, kronecker_square

__all__ = [
    "AttentionKernel", "KERNELS", "DEFAULT_CHUNK_SIZE", "attend", "attention_map", "create_kernel", "list_kernels",
    "kronecker_square", "linear_attention", "softmax_attention",
]


def list_kernels() -> list[str]:
    """The kernel names ``attend`` and ``create_kernel`` accept."""
    return list(KERNELS)


def create_kernel(name: str, *, head_dim: int, num_heads: int = 1, **options: Any) -> AttentionKernel:
    """Build kernel ``name`` as an nn.Module for ``num_heads`` heads of size ``head_dim``.

    ``options`` are the kernel's own (``eps``, ``chunk_size``; qt: ``scale``; qt_paper: ``alpha``, ``beta``,
    ``gamma``; qt_pool: ``pool``; qt_chunk: ``chunks``; qt_random: ``seed``; focused: ``focusing_factor``; l2vit:
    ``temperature``, ``den_min``).
    """
    if name not in KERNELS:
        close = difflib.get_close_matches(str(name), KERNELS, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown attention kernel {name!r}.{hint} Known kernels: {', '.join(KERNELS)}")
    try:
        return KERNELS[name](head_dim, num_heads, **options)
    except TypeError as e:  # an option the kernel does not take
        raise ValueError(f"bad option for kernel {name!r}: {e}") from None


def _kernel_for(q: Tensor, k: Tensor, v: Tensor, kernel: str, options: dict[str, Any]) -> AttentionKernel:
    check_qkv(q, k, v)
    module = create_kernel(kernel, head_dim=q.shape[-1], num_heads=q.shape[1], **options)
    return module.to(q.device)


def attend(q: Tensor, k: Tensor, v: Tensor, kernel: str = "qt", **kernel_options: Any) -> Tensor:
    """Non-causal attention of q (B, H, Nq, d) over k (B, H, N, d) and v (B, H, N, dv) -> (B, H, Nq, dv).

    Linear kernels cost O(N·d_φ·dv); ``softmax`` goes through torch's scaled_dot_product_attention. Learnable
    parameters (qt's scale, qt_paper's α β γ, focused's scale, l2vit's temperature) take their initial values or
    ``kernel_options``; to train them, use ``create_kernel``.
    """
    return _kernel_for(q, k, v, kernel, kernel_options)(q, k, v)


def attention_map(q: Tensor, k: Tensor, kernel: str = "qt", **kernel_options: Any) -> Tensor:
    """The explicit normalised (B, H, Nq, N) attention map of ``kernel``, O(N²): the reference and the figures."""
    return _kernel_for(q, k, k[..., :1], kernel, kernel_options).attention_map(q, k)
