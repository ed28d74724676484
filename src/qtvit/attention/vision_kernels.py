"""The released operators of recent vision linear attentions, each a formula first (see ``kernels.py``).

Each is the attention operator of the authors' released code, not a paper table's reading of it; the layer parts
around it (depthwise convs on V, gates, positional encodings, RoPE) are not kernels. RoPE-style maps that the
released code applies to the numerator's features only are the ``numerator_map`` argument of ``forward``.
Notation as in ``kernels.py``: q, k (B, H, N, d), v (B, H, N, dv); x̂ = x/‖x‖₂; x⁺ = ReLU(x), x⁻ = ReLU(−x).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionKernel
from .core import (
    NumeratorMap,
    _chunks,
    compute_dtype,
    fp32_island,
    l2norm_heads,
    normalize,
    result_dtype,
    to_input_dtype,
)
from .reference import SIMILARITIES, aft_simple_channel_maps, hydra_channel_maps, polaformer_maps

__all__ = ["FocusedKernel", "CastlingKernel", "HydraKernel", "AFTSimpleKernel", "PolaKernel", "InLineKernel",
           "MALAKernel", "RALAKernel", "rope_2d", "rotate_every_two"]


class FocusedKernel(AttentionKernel):
    """focused: FLatten's focused linear attention, as its released FocusedLinearAttention.

    x ← (ReLU(x) + 1e-6)/softplus(w), with a learnable scale w per channel (init 0); φ_p(x) = x^p·‖x‖/‖x^p‖ with the
    element-wise power p = 3. Both norms, and w, run over the token's channels of all heads at once (the released
    code works on the (B, N, C) tensor before splitting heads), so the kernel needs all heads together
    (``mixes_heads``). Sim(q_i, k_j) = φ_p(q_i)·φ_p(k_j)/N, divided by Σ_j Sim + 1e-6: the released
    z = 1/(q·mean_j k_j + 1e-6), kv = (k/√N)ᵀ(v/√N). d_φ = d, O(N·d·dv). The positional encoding on K and the
    DWC(V) branch belong to the layer. Source: Han et al., FLatten Transformer, ICCV 2023
    (LeapLabTHU/FLatten-Transformer, models/flatten_pvt.py).
    """

    name = "focused"
    mixes_heads = True

    def __init__(self, head_dim: int, num_heads: int = 1, *, focusing_factor: float = 3.0, eps: float = 1e-6,
                 **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, eps=eps, **kwargs)
        self.focusing_factor = focusing_factor
        self.scale = nn.Parameter(torch.zeros(num_heads, 1, head_dim))  # the released (1, 1, C), head-major

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def phi(self, x: Tensor) -> Tensor:
        x = (F.relu(x) + 1e-6) / F.softplus(self.scale.to(x.dtype))
        xp = x ** self.focusing_factor
        return xp * (l2norm_heads(x) / l2norm_heads(xp))

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return self.phi(k) / stats


class CastlingKernel(AttentionKernel):
    """castling: Castling-ViT's released linear-angular operator (LinAngularAttention, no sparse branch).

    O_i = ℓ2(0.5·v_i + q̂_i·(k̂ᵀV)/π), ℓ2(y) = y/‖y‖₂ over the row: the identity term 0.5·v_i (the 1/2 of
    1 − θ/π ≈ 1/2 + q̂·k̂/π applied as v_i, not summed over the keys), no denominator, then each output row
    L2-normalised. φ(x) = x̂/√π, d_φ = d, O(N·d·dv); self-attention only. ``angular`` is QT-ViT Table 2's reading
    (1/2 + q̂·k̂/π summed over the keys and row-normalised). The DWConv branch added after ℓ2 belongs to a layer.
    Source: You et al., Castling-ViT, CVPR 2023 (GATECH-EIC/Castling-ViT, attention.py, named castling-vit.py in
    one earlier commit). The authors call that release "an unofficial release of miniature code to reveal the core
    implementation of our attention block"; their final block is in MViT's MultiScaleAttention format.
    """

    name = "castling"
    normaliser = "none"
    self_weight = 0.5

    def phi(self, x: Tensor) -> Tensor:
        return normalize(x) / math.sqrt(math.pi)

    def post(self, out: Tensor) -> Tensor:
        return normalize(out)


class _ElementwiseKernel(AttentionKernel):
    """An element-wise operator, channel by channel: O_ic = g(q)_ic · Σ_j w(k)_jc v_jc, no dot product over channels.

    So dv = d, and the "state" is one vector of d per head: O(N·d) time. ``channel_maps(q, k)`` is the explicit
    (B, H, Nq, N, d) stack of per-channel maps g(q)_ic·w(k)_jc of ``qtvit.attention.reference``; ``explicit`` applies
    each channel's map, ``attention_map`` shows their mean over channels (a display, not the operator).
    """

    normaliser = "none"

    def channel_maps(self, q: Tensor, k: Tensor) -> Tensor:
        raise NotImplementedError

    def gate_q(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    def weight_k(self, k: Tensor, stats: Any) -> Tensor:
        raise NotImplementedError

    def _check(self, q: Tensor, k: Tensor, v: Tensor | None = None) -> None:
        super()._check(q, k, v)
        if v is not None and v.shape[-1] != q.shape[-1]:
            raise ValueError(f"{self.name} gates channel by channel: v needs the head dim of q and k "
                             f"({q.shape[-1]}), got {v.shape[-1]}")

    def linear(self, q: Tensor, k: Tensor, v: Tensor, numerator_map: NumeratorMap | None = None) -> Tensor:
        if numerator_map is not None:
            raise ValueError(f"{self.name} has no feature map for a numerator_map to act on")
        stats = self.token_stats(q, k)
        state = None
        for sl in _chunks(k.shape[2], self.tokens_per_chunk(k)):
            part = (self.weight_k(k[:, :, sl], stats) * v[:, :, sl]).sum(dim=2, keepdim=True)
            state = part if state is None else state + part
        return self.gate_q(q) * state

    def explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q, k, v)
        dtype = result_dtype(q, k, v)
        ct = compute_dtype(dtype)
        with fp32_island(q.device):
            out = torch.einsum("bhijc,bhjc->bhic", self.channel_maps(q.to(ct), k.to(ct)), v.to(ct))
        return to_input_dtype(out, dtype)


class HydraKernel(_ElementwiseKernel):
    """hydra: Hydra attention, element-wise: O = q̂ ⊙ Σ_t (k̂_t ⊙ v_t) per head, x̂ = x/‖x‖₂ over the head's channels.

    Per channel c: O_ic = q̂_ic·Σ_j k̂_jc v_jc; no denominator, no 1/N, dv = d, O(N·d) time. One head of D channels
    is the paper's H = D form (its appendix code normalises q and k over all D channels of a token); several heads
    normalise each head's channels apart. ``cosine`` is the multi-head dot-product reading with a d×d state,
    q̂·(Σ_j k̂_jᵀ v_j)/N (times N: what this kernel computed before issue 26). Source: Bolya et al., Hydra Attention:
    Efficient Attention with Many Heads, ECCV-W 2022, Sec. 3 and the appendix code (against the formula).
    """

    name = "hydra"

    def channel_maps(self, q: Tensor, k: Tensor) -> Tensor:
        return hydra_channel_maps(q, k)

    def gate_q(self, q: Tensor) -> Tensor:
        return normalize(q)

    def weight_k(self, k: Tensor, stats: Any) -> Tensor:
        return normalize(k)


class AFTSimpleKernel(_ElementwiseKernel):
    """aft_simple: AFT-simple's element-wise operator O_t = σ(q_t) ⊙ Σ_t' softmax_t'(K)_t' ⊙ v_t'.

    Per channel c: O_tc = σ(q_tc)·Σ_t' w_t'c v_t'c with w_·c = softmax over the tokens of K_·c (its logsumexp taken
    over all tokens once, so chunking is exact). No dot product over channels, so it needs dv = d; the "state" is one
    vector of d, O(N·d) time. ``sigmoid_softmax`` is QT-ViT Table 2's dot-product reading. Source: Zhai et al., An
    Attention Free Transformer, 2021, Eq. for AFT-simple (against the formula).
    """

    name = "aft_simple"

    def channel_maps(self, q: Tensor, k: Tensor) -> Tensor:
        return aft_simple_channel_maps(q, k)

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return torch.logsumexp(k, dim=2, keepdim=True)

    def gate_q(self, q: Tensor) -> Tensor:
        return torch.sigmoid(q)

    def weight_k(self, k: Tensor, stats: Any) -> Tensor:
        return torch.exp(k - stats)


class PolaKernel(AttentionKernel):
    """polaformer: PolaFormer's polarity-aware linear attention, as its released PolaLinearAttention.

    x ← x/softplus(w) (w per channel, init 0); p = 1 + α·σ(t), a learnable power per head and channel (t init 0,
    α = 4). φ(k) = [k⁺^p, k⁻^p]; the same-sign query map φ_s(q) = [q⁺^p, q⁻^p], the opposite-sign one
    φ_o(q) = [q⁻^p, q⁺^p]. The first half of v's channels is read with Sim_s = φ_s(q)·φ(k)/N
    = (q⁺^p·k⁺^p + q⁻^p·k⁻^p)/N, the second half with Sim_o = φ_o(q)·φ(k)/N = (q⁻^p·k⁺^p + q⁺^p·k⁻^p)/N, each
    divided by its row sum + 1e-6 (the released z = 1/(q·mean_j k_j + 1e-6)). d_φ = 2d, O(N·d·dv); dv even.
    One state serves both: φ_o(q)·X = φ_s(q)·(X with its two row blocks swapped), so one product per query.
    ``attention_map`` is the same-sign map. The gate g, DWC(V) and positional encoding belong to the layer.
    Source: Meng et al., PolaFormer, ICLR 2025 (ZacharyMeng/PolaFormer pola_pvt.py, as mirrored in
    fla-org/flash-bidirectional-linear-attention).
    """

    name = "polaformer"
    mixes_heads = True  # per-head powers: the input must have num_heads heads

    def __init__(self, head_dim: int, num_heads: int = 1, *, alpha: float = 4.0, eps: float = 1e-6,
                 **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, eps=eps, **kwargs)
        self.alpha = alpha
        self.scale = nn.Parameter(torch.zeros(num_heads, 1, head_dim))
        self.power = nn.Parameter(torch.zeros(num_heads, 1, head_dim))

    @property
    def feature_dim(self) -> int:
        return 2 * self.head_dim

    def _check(self, q: Tensor, k: Tensor, v: Tensor | None = None) -> None:
        super()._check(q, k, v)
        if v is not None and v.shape[-1] % 2:
            raise ValueError(f"polaformer splits v's channels into a same-sign and an opposite-sign half: "
                             f"dv must be even, got {v.shape[-1]}")

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def exponent(self, dtype: torch.dtype) -> Tensor:
        return 1 + self.alpha * torch.sigmoid(self.power.to(dtype))

    def phi(self, x: Tensor) -> Tensor:
        x = x / F.softplus(self.scale.to(x.dtype))
        p = self.exponent(x.dtype)
        return torch.cat([F.relu(x) ** p, F.relu(-x) ** p], dim=-1)

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return self.phi(k) / stats

    def _swap(self, x: Tensor, dim: int) -> Tensor:
        return torch.cat(x.split(self.head_dim, dim=dim)[::-1], dim=dim)

    def state(self, kv: Tensor, ksum: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """[KV₁ | swap(KV₂)] and [Σφ(k)ᵀ | swap(Σφ(k)ᵀ)]: both halves of v and both denominators, one product each."""
        half = kv.shape[-1] // 2
        ks = ksum.transpose(-1, -2)
        return torch.cat([kv[..., :half], self._swap(kv[..., half:], -2)], -1), torch.cat([ks, self._swap(ks, -2)], -1)

    def finish(self, num: Tensor, den: Tensor | None, vmean: Tensor | None) -> Tensor:
        half = num.shape[-1] // 2
        return torch.cat([num[..., :half] / (den[..., :1] + self.eps), num[..., half:] / (den[..., 1:] + self.eps)], -1)

    def explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Both explicit maps: the same-sign one on v's first half, the opposite-sign one on its second half."""
        self._check(q, k, v)
        dtype = result_dtype(q, k, v)
        ct = compute_dtype(dtype)
        with fp32_island(q.device):
            same, opp = (self.normalise_map(m) for m in polaformer_maps(self, q.to(ct), k.to(ct)))
            v1, v2 = v.to(ct).chunk(2, dim=-1)
            out = torch.cat([same @ v1, opp @ v2], dim=-1)
        return to_input_dtype(out, dtype)


class InLineKernel(AttentionKernel):
    """inline: InLine attention (injective linear attention), subtractive normalisation.

    Sim(q, k) = φ(q)·φ(k)·d^-½/N and O_i = Σ_j [Sim_ij − mean_s Sim_is + 1/N] v_j = num_i + (1 − den_i)·v̄: rows sum
    to 1 without a division, and the map is injective in q (a division cancels q's scale). φ is the identity in
    the released DeiT code (``kernel_func`` also takes "relu", "leakyrelu", "exp": exp(0.2x), as the Swin code).
    d_φ = d, O(N·d·dv). Not positive: weights can be negative. The predicted 3×3 local residual belongs to the
    layer. Source: Han et al., Bridging the Divide, NeurIPS 2024 (LeapLabTHU/InLine, models/inline_deit.py).
    """

    name = "inline"
    normaliser = "subtract"
    KERNEL_FUNCS = ("identity", "relu", "leakyrelu", "exp")

    def __init__(self, head_dim: int, num_heads: int = 1, *, kernel_func: str = "identity", **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        if kernel_func not in self.KERNEL_FUNCS:
            raise ValueError(f"inline kernel_func must be one of {', '.join(self.KERNEL_FUNCS)}, got {kernel_func!r}")
        self.kernel_func = kernel_func

    def phi(self, x: Tensor) -> Tensor:
        if self.kernel_func == "relu":
            return F.relu(x)
        if self.kernel_func == "leakyrelu":
            return F.leaky_relu(x)
        if self.kernel_func == "exp":
            return torch.exp(0.2 * x)
        return x

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return self.phi(q) * (self.head_dim ** -0.5 / stats)


def rope_2d(h: int, w: int, d: int, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The sin and cos tables (h·w, d) of MALA's and RALA's released 2-D RoPE for a row-major h × w token grid:
    angles θ = 10000^-linspace(0, 1, d/4), each used for a pair of channels; the first d/2 channels turn with the
    row index, the last d/2 with the column index (qhfan/RALA ``RoPE``, the same in qhfan/MALA)."""
    angle = (1.0 / 10000 ** torch.linspace(0, 1, d // 4, dtype=torch.float64)).repeat_interleave(2)
    rows = torch.arange(h, dtype=torch.float64)[:, None, None] * angle
    cols = torch.arange(w, dtype=torch.float64)[None, :, None] * angle
    phase = torch.cat([rows.expand(h, w, -1), cols.expand(h, w, -1)], dim=-1).reshape(h * w, -1)
    return phase.sin().to(device, dtype), phase.cos().to(device, dtype)


def rotate_every_two(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the rotation by 90° of each channel pair RoPE turns."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


class _EluReleasedKernel(AttentionKernel):
    """φ(x) = ELU(x) + 1 with the eps of MALA's and RALA's released code (1e-6), which both kernels share, and their
    RoPE: ``rope=True`` rotates the numerator's φ(q), φ(k) by the tokens' places on a square grid (or on
    ``rope_grid=(h, w)``), as the released layers do; self-attention only, head_dim divisible by 4."""

    def __init__(self, head_dim: int, num_heads: int = 1, *, eps: float = 1e-6, rope: bool = False,
                 rope_grid: tuple[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, eps=eps, **kwargs)
        if rope and head_dim % 4:
            raise ValueError(f"{self.name} rope turns channel pairs by row and by column: head_dim must be divisible "
                             f"by 4, got {head_dim}")
        if rope_grid is not None and (not rope or len(rope_grid) != 2 or min(rope_grid) < 1):
            raise ValueError(f"{self.name} rope_grid={rope_grid!r}: give a grid (h, w) of positive sizes, together "
                             "with rope=True")
        self.rope = bool(rope)
        self.rope_grid = None if rope_grid is None else (int(rope_grid[0]), int(rope_grid[1]))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", rope=True, rope_grid={self.rope_grid}" if self.rope else "")

    def phi(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1

    def rotation(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE's (sin, cos) tables for the N tokens of k, (N, d) in q's dtype and device."""
        n = k.shape[2]
        if q.shape[2] != n:
            raise ValueError(f"{self.name} rope turns queries and keys by their places on one grid: it needs "
                             f"self-attention, got {q.shape[2]} queries and {n} keys")
        h, w = self.rope_grid or (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{self.name} rope: {n} tokens are not the {h} x {w} grid; pass rope_grid=(h, w) for a "
                             "non-square grid")
        return rope_2d(h, w, self.head_dim, q.dtype, q.device)

    def linear(self, q: Tensor, k: Tensor, v: Tensor, numerator_map: NumeratorMap | None = None) -> Tensor:
        if self.rope:
            if numerator_map is not None:
                raise ValueError(f"{self.name} was built with rope=True, which is its numerator map: pass no other")
            sin, cos = self.rotation(q, k)
            numerator_map = lambda f, sl: f * cos[sl] + rotate_every_two(f) * sin[sl]  # noqa: E731
        return super().linear(q, k, v, numerator_map)

    def explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """With rope: the rotated similarity of the reference (``rotate``) for the numerator, the plain one for the
        normaliser, then the kernel's ``finish``."""
        if not self.rope:
            return super().explicit(q, k, v)
        self._check(q, k, v)
        dtype = result_dtype(q, k, v)
        ct = compute_dtype(dtype)
        with fp32_island(q.device):
            q, k, v = q.to(ct), k.to(ct), v.to(ct)
            sin, cos = self.rotation(q, k)
            num = SIMILARITIES[self.name](self, q, k, rotate=lambda f: f * cos + rotate_every_two(f) * sin) @ v
            out = self.finish(num, self.similarity(q, k).sum(-1, keepdim=True), v.mean(dim=2, keepdim=True))
        return to_input_dtype(out, dtype)

    def attention_map(self, q: Tensor, k: Tensor) -> Tensor:
        """With rope: the weights A of O = A·v, read as ``explicit`` of v = I."""
        if not self.rope:
            return super().attention_map(q, k)
        eye = torch.eye(k.shape[2], dtype=k.dtype, device=k.device).expand(*k.shape[:2], -1, -1)
        return self.explicit(q, k, eye)


class MALAKernel(_EluReleasedKernel):
    """mala: Magnitude-Aware Linear Attention, as the released AddLinearAttention.

    φ(x) = ELU(x) + 1; Sim(q, k) = φ(q)·φ(k)·d^-½/N, z_i = Σ_j Sim_ij; O_i = (1 + 1/(z_i + 1e-6))·Σ_j Sim_ij v_j
    − z_i·v̄, i.e. weights a_ij = β_i Sim_ij − γ_i/N with β = 1 + 1/z, γ = z: rows sum to 1 (up to eps), and unlike
    a division the weights follow the query's magnitude. d_φ = d, O(N·d·dv). The released code rotates φ(q), φ(k)
    of the numerator with RoPE, not those of z: ``rope=True`` (or any ``numerator_map``); without it the operator
    differs from the released layer's. LePE and the output gate belong to the layer.
    Source: Fan et al., Rectifying Magnitude Neglect in Linear Attention, ICCV 2025
    (qhfan/MALA, classfication_release/model.py).
    """

    name = "mala"
    normaliser = "magnitude"

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return self.phi(q) * (self.head_dim ** -0.5 / stats)


class RALAKernel(_EluReleasedKernel):
    """rala: Rank-Augmented Linear Attention's kernel (RAVLT), key reweighting by the global query.

    φ(x) = ELU(x) + 1; q̄ = mean_i φ(q_i); α_j = softmax_j(q̄·φ(k_j)/√d) over all keys. Sim(q_i, k_j) =
    α_j·φ(q_i)·φ(k_j), divided by Σ_j Sim + 1e-6: the released k ← N·α·φ(k), z = 1/(q·mean_j k_j + 1e-6),
    kv = kᵀv/N. d_φ = d, O(N·d·dv); q̄ and the softmax's logsumexp are taken over all tokens once, so chunking is
    exact. The released layer rotates the numerator's φ(q), φ(k) with RoPE: ``rope=True`` (or any ``numerator_map``).
    LePE and the output gate belong to the layer.
    Source: Fan et al., Breaking the Low-Rank Dilemma of Linear Attention, CVPR 2025 (qhfan/RALA,
    classfication/RALA.py, GateLinearAttentionNoSilu; fla-org/flash-bidirectional-linear-attention's
    RALALinearAttention is the same operator).
    """

    name = "rala"

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        qbar = self.phi(q).mean(dim=2, keepdim=True) * self.head_dim ** -0.5  # (B, H, 1, d)
        lse = torch.logsumexp(self.phi(k) @ qbar.transpose(-1, -2), dim=2, keepdim=True)  # (B, H, 1, 1)
        return qbar, lse

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        qbar, lse = stats
        fk = self.phi(k)
        return fk * torch.exp(fk @ qbar.transpose(-1, -2) - lse)
