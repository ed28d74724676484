"""Attention kernels: ``attend(q, k, v, kernel="qt")`` and the explicit maps behind it.

>>> import torch, qtvit
>>> q = k = v = torch.randn(1, 2, 196, 16)
>>> qtvit.attend(q, k, v, kernel="qt").shape
torch.Size([1, 2, 196, 16])
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from torch import Tensor

from .._utils import did_you_mean
from .base import AttentionKernel
from .core import (DEFAULT_CHUNK_SIZE, AttentionRangeWarning, check_qkv, kronecker_square, linear_attention,
                   softmax_attention)
from .kernels import KERNELS

__all__ = [
    "AttentionKernel", "AttentionRangeWarning", "KERNELS", "DEFAULT_CHUNK_SIZE", "KernelFactory", "KernelLayer",
    "attend", "attention_map", "create_kernel",
    "kernel_factory", "list_kernels", "kronecker_square", "linear_attention", "softmax_attention",
]

KernelLayer = Callable[[int, int], nn.Module]  # (head_dim, num_heads) -> attention kernel module


def list_kernels() -> list[str]:
    """The kernel names ``attend`` and ``create_kernel`` accept."""
    return list(KERNELS)


def create_kernel(name: str, *, head_dim: int, num_heads: int = 1, **options: Any) -> AttentionKernel:
    """Build kernel ``name`` as an nn.Module for ``num_heads`` heads of size ``head_dim``.

    ``options`` are the kernel's own (``eps``, ``chunk_size``; qt: ``scale``; qt_paper: ``alpha``, ``beta``,
    ``gamma``; qt_pool: ``pool``; qt_chunk: ``chunks``; qt_random: ``seed``; focused: ``focusing_factor``; l2vit:
    ``temperature``, ``den_min``; polaformer: ``alpha``; inline: ``kernel_func``; mala, rala: ``rope``,
    ``rope_grid``, the released layers' RoPE on the numerator).
    """
    _check_name(name)
    try:
        return KERNELS[name](head_dim, num_heads, **options)
    except TypeError as e:  # an option the kernel does not take
        raise ValueError(f"bad option for kernel {name!r}: {e}") from None


def _check_name(name: str) -> None:
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}{did_you_mean(name, KERNELS)}; use one of "
                         f"{', '.join(KERNELS)} (qtvit.attention.list_kernels())")


class KernelFactory:
    """``factory(head_dim, num_heads)`` -> ``create_kernel(name, head_dim=..., num_heads=..., **options)``.

    What the models hand their attention layers (``kernel_layer``): the kernel is resolved once, in the model
    constructor, and every block builds its own instance for its head size. ``name`` and ``options`` are the
    JSON-friendly record of the choice.
    """

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        _check_name(name)
        self.name = name
        self.options = dict(options or {})

    def __call__(self, head_dim: int, num_heads: int = 1) -> AttentionKernel:
        return create_kernel(self.name, head_dim=head_dim, num_heads=num_heads, **self.options)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"kernel_factory({self.name!r}{opts})"


def kernel_factory(kernel: str | KernelLayer, **options: Any) -> KernelLayer:
    """Resolve a model's ``kernel`` argument once into a ``(head_dim, num_heads) -> nn.Module`` factory.

    ``kernel`` is a name from ``list_kernels()`` (with that kernel's ``options``), or already a callable of
    ``(head_dim, num_heads)`` returning an attention module (then ``options`` must be empty). An unknown name
    fails here; an unknown option when the first layer is built.
    """
    if isinstance(kernel, str):
        return KernelFactory(kernel, options)
    if callable(kernel):
        if options:
            raise ValueError(f"kernel options {sorted(options)} only apply to a kernel given by name; bind them "
                             "into your kernel factory instead")
        return kernel
    raise ValueError(f"kernel must be a kernel name ({', '.join(KERNELS)}) or a callable (head_dim, num_heads) -> "
                     f"nn.Module, got {type(kernel).__name__}")


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
