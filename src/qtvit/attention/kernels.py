"""The attention-kernel zoo: one nn.Module per kernel, each a formula first.

Every kernel gives two paths to the same numbers:
- the fast one, ``forward(q, k, v)``: the feature maps φ(q), φ(k) through the shared linear core (O(N·d_φ·dv));
- the reference one, ``similarity(q, k)``: the N×N similarity of ``qtvit.attention.reference``, written straight
  from the formula, never through φ where a closed form exists, so the tests check the feature map against the
  math and not against itself.

Notation: q, k of shape (B, H, N, d), v (B, H, N, dv); s = q·k/√d; x̂ = x/‖x‖₂; x² is element-wise.
Kernels with learnable parameters (qt, qt_paper, focused, l2vit) carry them here, so models use this same code.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import cpu_fused
from .base import AttentionKernel
from .vision_kernels import (
    AFTSimpleKernel,
    CastlingKernel,
    FocusedKernel,
    HydraKernel,
    InLineKernel,
    MALAKernel,
    PolaKernel,
    RALAKernel,
)
from .core import (
    NumeratorMap,
    compute_dtype,
    fp32_island,
    inplace_ok,
    kronecker_square,
    l2norm,
    normalize,
    result_dtype,
    softmax_attention,
    to_input_dtype,
)


class SoftmaxKernel(AttentionKernel):
    """softmax: Sim = exp(q·k/√d), the quadratic baseline (QT-ViT Table 2, 79.8%).

    No finite feature map; O(N²·d) time. The fast path is torch's scaled_dot_product_attention (flash / memory-
    efficient kernels where available). On CPU, half inputs are upcast to fp32 like every other kernel.
    Source: Vaswani et al. 2017.
    """

    name = "softmax"

    @property
    def feature_dim(self) -> int:
        return 0  # infinite-dimensional: there is no linear path

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q, k, v)
        dtype = result_dtype(q, k, v)
        ct = dtype if (q.device.type == "cuda" and dtype != torch.float64) else compute_dtype(dtype)
        with fp32_island(q.device):
            out = softmax_attention(q.to(ct), k.to(ct), v.to(ct), scale=self.head_dim ** -0.5)
        return to_input_dtype(out, dtype)

    def normalise_map(self, sim: Tensor) -> Tensor:
        return sim / sim.sum(dim=-1, keepdim=True)


class ReLUKernel(AttentionKernel):
    """relu: φ(x) = ReLU(x); Sim = ReLU(q)·ReLU(k). d_φ = d, O(N·d·dv).

    Exactly EfficientViT's LiteMLA (eps 1e-15 added to the normaliser). Source: Cai et al., EfficientViT, 2023.
    """

    name = "relu"

    def phi(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def linear_channels_first(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # EfficientViT's own formulation: ([v; 1] φ(k)ᵀ) φ(q), whose last row is the denominator
        out = (F.pad(v, (0, 0, 0, 1), value=1.0) @ F.relu(k).transpose(-1, -2)) @ F.relu(q)
        return out[:, :, :-1] / (out[:, :, -1:] + self.eps)


class EluKernel(AttentionKernel):
    """elu: φ(x) = ELU(x) + 1 > 0. d_φ = d, O(N·d·dv). Source: Katharopoulos et al., 2020."""

    name = "elu"

    def phi(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1


class CosineKernel(AttentionKernel):
    """cosine: Sim = q̂·k̂ / N, no denominator: QT-ViT Table 2's "cosine similarity" row. d_φ = d, O(N·d·dv).

    Times N: multi-head cosine linear attention q̂(k̂ᵀV), a d×d state per head, not Hydra (element-wise: ``hydra``).
    The 1/N keeps O on the scale of v whatever the token count, but it is not a constant the next layer simply
    absorbs: it changes with resolution (a model trained at 224 px and run at 448 px sees its attention output
    shrink 4×), and it changes the balance between the attention term and anything added to it (QT-ViT's v shortcut
    GELU(BN(v)), EfficientViT's multi-scale branches). Source: QT-ViT Table 2.
    """

    name = "cosine"
    normaliser = "none"

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return normalize(q) / math.sqrt(stats)

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return normalize(k) / math.sqrt(stats)


class MeanKernel(AttentionKernel):
    """mean: φ(x) = x/√N, so Sim = q·k/N, unnormalised (PolyNL's mean over tokens). d_φ = d, O(N·d·dv).

    Source: Babiloni et al., Poly-NL, 2021 (QT-ViT Table 2).
    """

    name = "mean"
    normaliser = "none"

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return k.shape[2]

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return q / math.sqrt(stats)

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return k / math.sqrt(stats)


class SigmoidSoftmaxKernel(AttentionKernel):
    """sigmoid_softmax: φ(q) = σ(q), φ(k) = softmax of k over the tokens, per channel. d_φ = d, O(N·d·dv).

    Sim(q_i, k_j) = Σ_c σ(q_ic) exp(k_jc) / Σ_m exp(k_mc), normalised over j: QT-ViT Table 2's reading of AFT-simple
    as a dot-product kernel. AFT-simple itself gates element-wise, per channel, with no sum over c (that is
    ``aft_simple``). The softmax's per-channel logsumexp is taken over all tokens once, so chunking stays exact.
    Source: Zhai et al., An Attention Free Transformer, 2021, as read by QT-ViT Table 2.
    """

    name = "sigmoid_softmax"

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        return torch.logsumexp(k, dim=2, keepdim=True)

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return torch.sigmoid(q)

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return torch.exp(k - stats)


class AngularKernel(AttentionKernel):
    """angular: Sim = 1/2 + q̂·k̂/π, the first-order expansion of 1 − θ(q, k)/π. φ(x) = [x̂/√π, 1/√2].

    d_φ = d + 1, O(N·d·dv); Sim ≥ 1/2 − 1/π > 0. This is QT-ViT Table 2's reading (a similarity summed over keys and
    row-normalised). Castling-ViT's released operator is different: 0.5·v_i + q̂_i(k̂ᵀV)/π with no denominator, then
    each output row L2-normalised (that is ``castling``). Source: You et al., Castling-ViT, 2023, as read by QT-ViT
    Table 2 (high-order residual dropped).
    """

    name = "angular"

    @property
    def feature_dim(self) -> int:
        return self.head_dim + 1

    def phi(self, x: Tensor) -> Tensor:
        return normalize(x) / math.sqrt(math.pi)

    def constant(self, dtype: torch.dtype) -> Tensor:
        return torch.tensor(0.5 ** 0.5, dtype=dtype)


class Taylor1Kernel(AttentionKernel):
    """taylor1: Sim = 1 + q·k/√d, the first-order Taylor expansion of exp(s). φ(x) = [x/d^¼, 1].

    d_φ = d + 1, O(N·d·dv). Not positive: rows whose similarities sum near zero are ill-conditioned.
    Source: Dass et al., ViTALiTy, 2023.
    """

    name = "taylor1"

    @property
    def feature_dim(self) -> int:
        return self.head_dim + 1

    def phi(self, x: Tensor) -> Tensor:
        return x / self.head_dim ** 0.25

    def constant(self, dtype: torch.dtype) -> Tensor:
        return torch.tensor(1.0, dtype=dtype)


class Taylor2Kernel(AttentionKernel):
    """taylor2: Sim = 1 + s + s²/2, the exact second-order Taylor expansion of exp(s), s = q·k/√d.

    QT-ViT Eq. 8 writes φ(x) = [vec(ϕ ⊗ ϕ)/√2, 1/√2] with ϕ = [a, 1], a = x/d^¼ ((d + 1)² + 1 features): since
    ⟨ϕ(q), ϕ(k)⟩ = s + 1 and ⟨K_r(a), K_r(b)⟩ = ⟨a, b⟩², ⟨φ(q), φ(k)⟩ = ((s + 1)² + 1)/2 = 1 + s + s²/2. The tensor
    square is symmetric, so each pair (i, j), (j, i) is kept once, scaled by √2 (the same inner product, exactly):
    φ(x) = [{ϕ_i ϕ_j w_ij}_{i≤j, (i,j)≠(d,d)}, 1] with w_ii = 1/√2, w_ij = 1: the pairs (i, d) are the linear
    terms a_i, and ½Σ_i a_i²b_i² + Σ_{i<j} a_ia_jb_ib_j + a·b + 1 = s²/2 + s + 1. d_φ = 1 + d + d(d+1)/2 (153 for
    d = 16, against 290), O(N·d²·dv). Both factors of every product are gathered by one small matmul each
    (one-hot columns with d^-¼ and w folded in; far faster than index_select), so φ costs two GEMMs and one
    product, in place outside autograd. Sim ≥ 1/2 > 0.
    Source: Xu et al., QT-ViT, NeurIPS 2024, Eq. 4-8 (the symmetric form is exact, not one of Table 3's reductions).
    """

    name = "taylor2"

    def __init__(self, head_dim: int, num_heads: int = 1, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        d = head_dim
        i, j = torch.triu_indices(d, d)  # the quadratic pairs; the linear terms a_i (pairs (i, d)) come last
        rows = torch.arange(len(i))
        left = torch.zeros(d, len(i) + d, dtype=torch.float64)
        right = torch.zeros(d, len(i) + d, dtype=torch.float64)
        left[i, rows] = d ** -0.25
        left[torch.arange(d), len(i) + torch.arange(d)] = d ** -0.25
        w = torch.where(i == j, torch.tensor(0.5, dtype=torch.float64).sqrt(), torch.tensor(1.0, dtype=torch.float64))
        right[j, rows] = w * d ** -0.25
        # float64 masters, not buffers (a .half() model would round d^-¼ and 1/√2); cast once per dtype and device
        self._gather = (left, right)
        self._cast: dict[tuple, tuple[Tensor, Tensor]] = {}

    @property
    def feature_dim(self) -> int:
        d = self.head_dim
        return 1 + d + d * (d + 1) // 2

    def phi(self, x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = tuple(m.to(x.device, x.dtype) for m in self._gather)
        left, right = self._cast[key]
        flat = x.reshape(-1, self.head_dim)
        a, b = flat @ left, flat @ right
        b[:, -self.head_dim:] = 1.0  # the 1 of ϕ: the linear terms a_i·1
        out = a.mul_(b) if inplace_ok(a, b) else a * b
        return out.view(*x.shape[:-1], out.shape[-1])

    def constant(self, dtype: torch.dtype) -> Tensor:
        return torch.tensor(1.0, dtype=dtype)


class QTKernel(AttentionKernel):
    """qt: the kernel of the official QT-ViT code (AMD_QTViT, LiteMLA.relu_linear_att).

    u = x/(‖x‖ + eps); u = u²; u = u/(‖u‖ + eps); φ(x) = [u, s] with one learnable scalar s (init 1, the official
    ``ones_scale1``). Sim = cos(q², k²) + s²: the compact Taylor kernel's self-products x_i² plus a constant, with
    the paper's β = 0 and α replaced by the data-dependent 1/‖x²‖. d_φ = d + 1, O(N·d·dv).
    Source: Xu et al., QT-ViT, NeurIPS 2024, Eq. 11, and SPEC A.8.
    """

    name = "qt"

    def __init__(self, head_dim: int, num_heads: int = 1, *, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def feature_dim(self) -> int:
        return self.head_dim + 1

    def squared_direction(self, x: Tensor, dim: int = -1) -> Tensor:
        """The official u = x/(‖x‖ + ε), u = u², u/(‖u‖ + ε) in closed form, x²/‖x²‖ over axis ``dim`` (relative
        difference ≤ ε√d, 4e-15 at d = 16; an all-zero token gives 0): three passes instead of eight, in place outside
        autograd (1.1-1.7x faster for keys at N = 4096 than torch's fused weight norm). Finite in fp32 for |x| < 1e9."""
        x2 = x * x
        n2 = l2norm(x2, dim)
        return x2.div_(n2) if inplace_ok(x2, n2) else x2 / n2

    def phi(self, x: Tensor) -> Tensor:
        return self.squared_direction(x)

    def phi_q_factored(self, q: Tensor, stats: Any) -> tuple[Tensor, Tensor | None]:
        """(q², ‖q²‖): the core folds the division by ‖q²‖ into its denominator (one pass fewer than for the keys)."""
        x2 = q * q
        return x2, l2norm(x2)

    def constant(self, dtype: torch.dtype) -> Tensor:
        return self.scale if self.scale.dtype == dtype else self.scale.to(dtype)

    def linear_channels_first(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The core's shifted read on channel-major q, k (B, H, d, N), v (B, H, dv, N): f = k²/‖k²‖, S = Σ v fᵀ,
        z = Σ f, b = c²N + ε, m = c²Σv/b, O = m + (S − m zᵀ) q²/(zᵀq² + ‖q²‖ b), every product over the channels."""
        fk = self.squared_direction(k, dim=-2)
        z = fk.sum(dim=-1, keepdim=True)                      # (B, H, d, 1)
        c2 = self.constant(q.dtype) ** 2
        bias = c2 * k.shape[-1] + self.eps
        mean = v.sum(dim=-1, keepdim=True) * (c2 / bias)      # (B, H, dv, 1)
        state = v @ fk.transpose(-1, -2) - mean @ z.transpose(-1, -2)  # (B, H, dv, d)
        q2 = q * q
        return state @ q2 / (z.transpose(-1, -2) @ q2 + l2norm(q2, dim=-2) * bias) + mean

    def linear(self, q: Tensor, k: Tensor, v: Tensor, numerator_map: NumeratorMap | None = None) -> Tensor:
        # Inference on the CPU in float32: one fused pass over the keys and one over the queries (cpu_fused), the
        # same maths as the shared core's shifted read, without its dozen N-sized temporaries.
        if numerator_map is None and cpu_fused.usable(q, k, v, self.scale) and cpu_fused.available():
            return cpu_fused.qt_attention(q, k, v, self.scale, self.eps)
        return super().linear(q, k, v, numerator_map)


class QTPaperKernel(AttentionKernel):
    """qt_paper: the compact kernel of QT-ViT Eq. 11 with learnable α, β, γ.

    φ(x) = [α·x²/√2, β·(4/d)^¼·x/√2, γ/√2, 1/√2], so Sim = ½[α² Σ_i q_i² k_i² + 2β² s + γ² + 1].
    β = 0 in every reported experiment, so it is frozen at 0 unless ``learn_beta=True``. d_φ = 2d + 2, O(N·d·dv).
    Source: Xu et al., QT-ViT, NeurIPS 2024, Eq. 11 (SPEC A.7).
    """

    name = "qt_paper"

    def __init__(self, head_dim: int, num_heads: int = 1, *, alpha: float = 1.0, beta: float = 0.0,
                 gamma: float = 1.0, learn_beta: bool = False, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)), requires_grad=learn_beta)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    @property
    def feature_dim(self) -> int:
        return 2 * self.head_dim + 2

    def phi(self, x: Tensor) -> Tensor:
        a, b = self.alpha.to(x.dtype), self.beta.to(x.dtype)
        return torch.cat([a * x * x, b * (4 / self.head_dim) ** 0.25 * x], dim=-1) / math.sqrt(2)

    def constant(self, dtype: torch.dtype) -> Tensor:
        g = self.gamma.to(dtype)  # [γ/√2, 1/√2] act as one constant of square (γ² + 1)/2
        return torch.sqrt((g * g + 1) / 2)

    def features(self, x: Tensor) -> Tensor:
        g = self.gamma.to(x.dtype)
        const = torch.stack([g, torch.ones_like(g)]).expand(*x.shape[:-1], 2) / math.sqrt(2)
        return torch.cat([self.phi(x), const], dim=-1)


class _ReducedTaylor2Kernel(AttentionKernel):
    """Shared form of QT-ViT Table 3's reductions of the Kronecker term (Eq. 10 with a cheaper quadratic block).

    φ(x) = [Q(x)/√2, x/d^¼/√2, x/d^¼/√2, 1/√2, 1/√2] where Q(q)·Q(k) approximates s² = (q·k)²/d, so
    Sim = 1 + s + ½·Q(q)·Q(k); the two linear copies and the constant are Eq. 10's.
    """

    def quadratic(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def quadratic_dim(self) -> int:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        return self.quadratic_dim + 2 * self.head_dim + 2

    def phi(self, x: Tensor) -> Tensor:
        lin = x / self.head_dim ** 0.25
        return torch.cat([self.quadratic(x), lin, lin], dim=-1) / math.sqrt(2)

    def constant(self, dtype: torch.dtype) -> Tensor:
        return torch.tensor(1.0, dtype=dtype)  # [1/√2, 1/√2]

    def features(self, x: Tensor) -> Tensor:
        return F.pad(self.phi(x), (0, 2), value=0.5 ** 0.5)


class QTPoolKernel(_ReducedTaylor2Kernel):
    """qt_pool: the Kronecker term of channel-average-pooled inputs, y = avgpool_p(x) ∈ R^{d/p}.

    Q(x) = p·vec(y ⊗ y)/√d, so Q(q)·Q(k) = p²(y_q·y_k)²/d (exact s² when x is constant within each pool window).
    d_φ = (d/p)² + 2d + 2, O(N·d²/p²·dv). Source: QT-ViT Table 3, method 1.

    The paper leaves two things open, and this is one reading of each: (1) the pooling operator — average pooling
    over neighbouring channels here (max pooling, or pooling strided channels, would be as consistent with the
    text); (2) whether only the quadratic term is pooled — here the linear and constant terms of Eq. 10 stay full
    size (2d + 2 entries), so qt_pool = taylor2 exactly when x is constant in each pool window. Pooling the whole
    input first (y in place of x everywhere) would give d_φ = (d/p + 1)² + 1 and a different linear term.
    """

    name = "qt_pool"

    def __init__(self, head_dim: int, num_heads: int = 1, *, pool: int = 2, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        if pool < 1 or head_dim % pool:
            raise ValueError(f"qt_pool needs head_dim divisible by pool, got head_dim={head_dim}, pool={pool}")
        self.pool = pool

    @property
    def quadratic_dim(self) -> int:
        return (self.head_dim // self.pool) ** 2

    def pooled(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.head_dim // self.pool, self.pool)).mean(-1)

    def quadratic(self, x: Tensor) -> Tensor:
        return kronecker_square(self.pooled(x)) * (self.pool / math.sqrt(self.head_dim))


class QTChunkKernel(_ReducedTaylor2Kernel):
    """qt_chunk: the Kronecker term of each of c channel chunks, concatenated (cross-chunk products dropped).

    Q(x) = √c·[vec(x⁽¹⁾ ⊗ x⁽¹⁾), …, vec(x⁽ᶜ⁾ ⊗ x⁽ᶜ⁾)]/√d, so Q(q)·Q(k) = c·Σ_g (q⁽ᵍ⁾·k⁽ᵍ⁾)²/d.
    d_φ = d²/c + 2d + 2, O(N·d²/c·dv). Source: QT-ViT Table 3, method 2.
    """

    name = "qt_chunk"

    def __init__(self, head_dim: int, num_heads: int = 1, *, chunks: int = 2, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        if chunks < 1 or head_dim % chunks:
            raise ValueError(f"qt_chunk needs head_dim divisible by chunks, got head_dim={head_dim}, chunks={chunks}")
        self.chunks = chunks

    @property
    def quadratic_dim(self) -> int:
        return self.head_dim ** 2 // self.chunks

    def split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.chunks, self.head_dim // self.chunks))

    def quadratic(self, x: Tensor) -> Tensor:
        return kronecker_square(self.split(x)).flatten(-2) * math.sqrt(self.chunks / self.head_dim)


class QTRandomKernel(_ReducedTaylor2Kernel):
    """qt_random: d randomly chosen products x_i·x_j out of the d² of the Kronecker term.

    Each kept item stands for d items, so Q(x) = √d·{x_i x_j/√d}_{(i,j)∈S} = {x_i x_j}_{(i,j)∈S} and Q(q)·Q(k) is an
    unbiased estimate of s². The pairs are drawn once from ``seed`` and kept as a buffer. d_φ = 3d + 2, O(N·d·dv).
    Source: QT-ViT Table 3, method 3 ("leads to poor results": 61.8%).
    """

    name = "qt_random"

    def __init__(self, head_dim: int, num_heads: int = 1, *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        g = torch.Generator().manual_seed(seed)
        flat = torch.randperm(head_dim * head_dim, generator=g)[:head_dim]
        self.register_buffer("pairs", torch.stack([flat // head_dim, flat % head_dim], dim=1), persistent=False)

    @property
    def quadratic_dim(self) -> int:
        return self.head_dim

    def quadratic(self, x: Tensor) -> Tensor:
        return x[..., self.pairs[:, 0]] * x[..., self.pairs[:, 1]]


class L2ViTKernel(AttentionKernel):
    """l2vit: L2ViT's enhanced linear attention.

    O_i = τ_h · ReLU(q_i)·KV / max(ReLU(q_i)·Σ_j ReLU(k_j), 100), KV = Σ_j ReLU(k_j)ᵀ v_j, with a learnable per-head
    temperature τ (init d^-½, the official ``attn.temperature``). The clamp, not an eps, stabilises the division.
    d_φ = d, O(N·d·dv). Source: Zheng, The Linear Attention Resurrection in Vision Transformer, 2025.
    """

    name = "l2vit"

    def __init__(self, head_dim: int, num_heads: int = 1, *, temperature: float | None = None,
                 den_min: float = 100.0, **kwargs: Any) -> None:
        super().__init__(head_dim, num_heads, **kwargs)
        init = head_dim ** -0.5 if temperature is None else temperature
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), float(init)))
        self.den_min = den_min

    def phi(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def _tau(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.num_heads:
            raise ValueError(f"l2vit kernel was built for {self.num_heads} heads, input has {x.shape[1]}")
        return self.temperature.to(x.dtype)

    def finish(self, num: Tensor, den: Tensor | None, vmean: Tensor | None) -> Tensor:
        return num * self._tau(num) / den.clamp_min(self.den_min)

    def normalise_map(self, sim: Tensor) -> Tensor:
        return sim * self._tau(sim) / sim.sum(dim=-1, keepdim=True).clamp_min(self.den_min)


KERNELS: dict[str, type[AttentionKernel]] = {
    cls.name: cls
    for cls in (
        SoftmaxKernel, ReLUKernel, EluKernel, CosineKernel, MeanKernel, SigmoidSoftmaxKernel, AngularKernel,
        Taylor1Kernel, Taylor2Kernel, QTKernel, QTPaperKernel, QTPoolKernel, QTChunkKernel, QTRandomKernel,
        FocusedKernel, L2ViTKernel, HydraKernel, CastlingKernel, AFTSimpleKernel, PolaKernel, InLineKernel,
        MALAKernel, RALAKernel,
    )
}
