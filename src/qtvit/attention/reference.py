"""Explicit O(N²) similarities Sim(q_i, k_j), written from each kernel's formula (as fla's ``naive.py``).

Each function takes the kernel module (for its head dim and learnable parameters) and q (B, H, Nq, d), k (B, H, N, d),
and returns the (B, H, Nq, N) similarity without going through the kernel's feature map φ wherever a closed form
exists, so the tests check the fast linear path against the math and not against itself. ``AttentionKernel.similarity``
(and so ``attention_map`` and ``explicit``) reads them from ``SIMILARITIES`` by kernel name.

Notation: s = q·k/√d; x̂ = x/‖x‖₂; x² is element-wise.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SIMILARITIES", "reference_similarity"]


def _dot(q: Tensor, k: Tensor) -> Tensor:
    return q @ k.transpose(-1, -2)


def _s(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    return _dot(q, k) / math.sqrt(kernel.head_dim)


def softmax(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """exp(s), shifted by the row max: the same map after normalisation, and no overflow."""
    logits = _s(kernel, q, k)
    return torch.exp(logits - logits.amax(dim=-1, keepdim=True))


def relu(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """ReLU(q)·ReLU(k) (EfficientViT, and L2ViT before its temperature and clamp)."""
    return _dot(F.relu(q), F.relu(k))


def elu(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """(ELU(q) + 1)·(ELU(k) + 1)."""
    return _dot(F.elu(q) + 1, F.elu(k) + 1)


def cosine(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """q·k / (‖q‖ ‖k‖) / N."""
    norms = torch.linalg.vector_norm(q, dim=-1, keepdim=True) * torch.linalg.vector_norm(k, dim=-1)[..., None, :]
    return _dot(q, k) / norms.clamp_min(1e-12) / k.shape[2]


def mean(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """q·k / N."""
    return _dot(q, k) / k.shape[2]


def sigmoid_softmax(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """Σ_c σ(q_ic) softmax_j(k_jc)."""
    return _dot(torch.sigmoid(q), torch.softmax(k, dim=2))


def angular(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1/2 + q̂·k̂/π."""
    return 0.5 + _dot(F.normalize(q, dim=-1), F.normalize(k, dim=-1)) / math.pi


def taylor1(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1 + s."""
    return 1 + _s(kernel, q, k)


def taylor2(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1 + s + s²/2."""
    s = _s(kernel, q, k)
    return 1 + s + s * s / 2


def qt(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """The official QT-ViT map: u = x/(‖x‖ + eps), u = u², u = u/(‖u‖ + eps); Sim = u_q·u_k + scale²."""
    def direction(x: Tensor) -> Tensor:
        x = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + kernel.eps)
        x = x * x
        return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + kernel.eps)

    scale = kernel.scale.to(q.dtype)
    return _dot(direction(q), direction(k)) + scale * scale


def qt_paper(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """½[α² Σ_i q_i² k_i² + 2β² s + γ² + 1]."""
    a, b, g = (p.to(q.dtype) for p in (kernel.alpha, kernel.beta, kernel.gamma))
    return 0.5 * (a * a * _dot(q * q, k * k) + 2 * b * b * _s(kernel, q, k) + g * g + 1)


def qt_pool(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1 + s + ½ p² (y_q·y_k)²/d with y = channel average pool of width p."""
    def pooled(x: Tensor) -> Tensor:
        return x.unflatten(-1, (kernel.head_dim // kernel.pool, kernel.pool)).mean(-1)

    quad = kernel.pool ** 2 * _dot(pooled(q), pooled(k)) ** 2 / kernel.head_dim
    return 1 + _s(kernel, q, k) + 0.5 * quad


def qt_chunk(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1 + s + ½ c Σ_g (q⁽ᵍ⁾·k⁽ᵍ⁾)²/d over c channel chunks."""
    c = kernel.chunks
    per_chunk = torch.einsum("bhigc,bhjgc->bhijg", q.unflatten(-1, (c, -1)), k.unflatten(-1, (c, -1)))
    return 1 + _s(kernel, q, k) + 0.5 * c * (per_chunk ** 2).sum(-1) / kernel.head_dim


def qt_random(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """1 + s + ½ Σ_{(i,j)∈S} (q_i k_i)(q_j k_j), from the element-wise products of every query-key pair."""
    prod = q.unsqueeze(-2) * k.unsqueeze(-3)  # (B, H, Nq, N, d)
    i, j = kernel.pairs[:, 0], kernel.pairs[:, 1]
    return 1 + _s(kernel, q, k) + 0.5 * (prod[..., i] * prod[..., j]).sum(-1)


def focused(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """φ_p(q)·φ_p(k): the focused function is defined through its map, there is no other closed form."""
    return _dot(kernel.phi(q), kernel.phi(k))


SIMILARITIES: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "softmax": softmax, "relu": relu, "elu": elu, "cosine": cosine, "mean": mean,
    "sigmoid_softmax": sigmoid_softmax, "angular": angular, "taylor1": taylor1, "taylor2": taylor2, "qt": qt,
    "qt_paper": qt_paper, "qt_pool": qt_pool, "qt_chunk": qt_chunk, "qt_random": qt_random, "focused": focused,
    "l2vit": relu,
}


def reference_similarity(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor | None:
    """The formula's (B, H, Nq, N) similarity for ``kernel``, or None for a kernel without a written reference."""
    fn = SIMILARITIES.get(getattr(kernel, "name", ""))
    return None if fn is None else fn(kernel, q, k)
