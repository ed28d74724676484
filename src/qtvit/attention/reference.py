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

__all__ = ["SIMILARITIES", "reference_similarity", "aft_simple_channel_maps", "hydra_channel_maps",
           "polaformer_maps"]


Rotation = Callable[[Tensor], Tensor]  # a map of (B, H, N, d) features by token position (RoPE)


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


def _norm(x: Tensor) -> Tensor:
    """‖x‖₂ over the last axis, floored at the dtype's smallest normal number (an all-zero row gives 0, not NaN)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def qt(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """cos(q², k²) + s² = (q²·k²)/(‖q²‖ ‖k²‖) + s²: the official map's similarity, whose two eps (1e-15) move it
    by under 1e-14 relative; 0 + s² for an all-zero token."""
    q2, k2 = q * q, k * k
    scale = kernel.scale.to(q.dtype)
    norms = (_norm(q2) * _norm(k2).transpose(-1, -2)).clamp_min(torch.finfo(q.dtype).tiny)
    return _dot(q2, k2) / norms + scale * scale


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
    """φ_p(q_i)·φ_p(k_j)/N, with φ_p written on the released code's token-major (B, N, C = H·d) layout: x ←
    (ReLU(x) + 1e-6)/softplus(w), φ_p(x) = x^p·‖x‖/‖x^p‖ with both norms over all C channels of the token."""
    def fmap(x: Tensor) -> Tensor:
        B, H, N, d = x.shape
        t = x.transpose(1, 2).reshape(B, N, H * d)
        t = (F.relu(t) + 1e-6) / F.softplus(kernel.scale.to(x.dtype).reshape(1, 1, H * d))
        tp = t ** kernel.focusing_factor
        t = tp / torch.linalg.vector_norm(tp, dim=-1, keepdim=True) * torch.linalg.vector_norm(t, dim=-1, keepdim=True)
        return t.reshape(B, N, H, d).transpose(1, 2)

    return _dot(fmap(q), fmap(k)) / k.shape[2]


def hydra_channel_maps(q: Tensor, k: Tensor) -> Tensor:
    """(B, H, Nq, N, d): channel c's map q̂_ic·k̂_jc of Hydra attention, x̂ = x/‖x‖₂ over the head's channels (the
    paper's appendix code: ``q / q.norm(dim=-1, keepdim=True)``, floored here for an all-zero token)."""
    qn, kn = q / _norm(q), k / _norm(k)
    return qn.unsqueeze(-2) * kn.unsqueeze(-3)


def hydra(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """The mean over channels of Hydra's per-channel maps, q̂·k̂/d (a display: the operator applies each channel's),
    without the (B, H, Nq, N, d) stack."""
    return _dot(q / _norm(q), k / _norm(k)) / q.shape[-1]


def castling(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """q̂·k̂/π; the 0.5·v_i term is the kernel's ``self_weight`` (0.5·I in the map), the row L2 norm its ``post``."""
    return _dot(F.normalize(q, dim=-1), F.normalize(k, dim=-1)) / math.pi


def aft_simple_channel_maps(q: Tensor, k: Tensor) -> Tensor:
    """(B, H, Nq, N, d): channel c's map σ(q_ic)·softmax_j(k_jc) of AFT-simple."""
    return torch.sigmoid(q).unsqueeze(-2) * torch.softmax(k, dim=2).unsqueeze(-3)


def aft_simple(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """The mean over channels of AFT-simple's per-channel maps, Σ_c σ(q_ic)·softmax_j(k_jc)/d (a display: the operator
    applies each channel's), without the (B, H, Nq, N, d) stack."""
    return _dot(torch.sigmoid(q), torch.softmax(k, dim=2)) / q.shape[-1]


def polaformer_maps(kernel: nn.Module, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Same-sign Σ_c (q⁺_c^p k⁺_c^p + q⁻_c^p k⁻_c^p)/N and opposite-sign Σ_c (q⁻_c^p k⁺_c^p + q⁺_c^p k⁻_c^p)/N
    similarities of x/softplus(w), written as sums over channels of element-wise products."""
    w = F.softplus(kernel.scale.to(q.dtype))
    p = 1 + kernel.alpha * torch.sigmoid(kernel.power.to(q.dtype))
    qs, ks = q / w, k / w
    qp, qn = qs.clamp_min(0) ** p, (-qs).clamp_min(0) ** p
    kp, kn = ks.clamp_min(0) ** p, (-ks).clamp_min(0) ** p
    n = k.shape[2]
    same = torch.einsum("bhic,bhjc->bhij", qp, kp) + torch.einsum("bhic,bhjc->bhij", qn, kn)
    opp = torch.einsum("bhic,bhjc->bhij", qn, kp) + torch.einsum("bhic,bhjc->bhij", qp, kn)
    return same / n, opp / n


def polaformer(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """The same-sign similarity (the map of v's first half); see ``polaformer_maps``."""
    return polaformer_maps(kernel, q, k)[0]


def inline(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """φ(q)·φ(k)/(√d·N); the subtractive normaliser makes the weights Sim_ij − mean_s Sim_is + 1/N."""
    phi = {"identity": lambda x: x, "relu": F.relu, "leakyrelu": F.leaky_relu,
           "exp": lambda x: torch.exp(0.2 * x)}[kernel.kernel_func]
    return _dot(phi(q), phi(k)) / (math.sqrt(kernel.head_dim) * k.shape[2])


def mala(kernel: nn.Module, q: Tensor, k: Tensor, rotate: Rotation | None = None) -> Tensor:
    """(ELU(q)+1)·(ELU(k)+1)/(√d·N); the magnitude-aware normaliser gives (1 + 1/z_i)·Sim_ij − z_i/N. With
    ``rotate`` (RoPE) applied to both feature maps first: the similarity of the released code's numerator."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if rotate is not None:
        fq, fk = rotate(fq), rotate(fk)
    return _dot(fq, fk) / (math.sqrt(kernel.head_dim) * k.shape[2])


def rala(kernel: nn.Module, q: Tensor, k: Tensor, rotate: Rotation | None = None) -> Tensor:
    """softmax_j(q̄·φ(k_j)/√d)·φ(q_i)·φ(k_j), φ = ELU + 1, q̄ the mean of φ(q) over the queries. With ``rotate``
    (RoPE) the product is of the rotated φ(q_i), φ(k_j) (the released numerator); the weights keep φ."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.softmax(_dot(fq.mean(dim=2, keepdim=True), fk) / math.sqrt(kernel.head_dim), dim=-1)
    if rotate is not None:
        fq, fk = rotate(fq), rotate(fk)
    return _dot(fq, fk) * weights


SIMILARITIES: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "softmax": softmax, "relu": relu, "elu": elu, "cosine": cosine, "mean": mean,
    "sigmoid_softmax": sigmoid_softmax, "angular": angular, "taylor1": taylor1, "taylor2": taylor2, "qt": qt,
    "qt_paper": qt_paper, "qt_pool": qt_pool, "qt_chunk": qt_chunk, "qt_random": qt_random, "focused": focused,
    "l2vit": relu, "hydra": hydra, "castling": castling, "aft_simple": aft_simple, "polaformer": polaformer,
    "inline": inline, "mala": mala, "rala": rala,
}


def reference_similarity(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor | None:
    """The formula's (B, H, Nq, N) similarity for ``kernel``, or None for a kernel without a written reference."""
    fn = SIMILARITIES.get(getattr(kernel, "name", ""))
    return None if fn is None else fn(kernel, q, k)
