"""The base of every attention kernel: a similarity Sim(q, k) = φ(q)·φ(k), its linear-time attention through the
shared core, and its explicit O(N²) reference (``qtvit.attention.reference``).

Shapes: q, k (B, H, N, d), v (B, H, N, dv).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from .core import (
    check_qkv,
    compute_dtype,
    explicit_attention,
    fp32_island,
    NumeratorMap,
    auto_chunk_size,
    finish_normaliser,
    linear_attention,
    normalise_similarity,
    result_dtype,
    to_input_dtype,
)
from .reference import reference_similarity

__all__ = ["AttentionKernel"]


class AttentionKernel(nn.Module):
    """Base class: a similarity Sim(q, k) = φ(q)·φ(k) and the attention it defines.

    ``normaliser`` picks how O_i is made of num_i = Σ_j Sim(q_i, k_j) v_j and den_i = Σ_j Sim(q_i, k_j)
    ("none", "divide", "subtract", "magnitude"; see ``qtvit.attention.core.linear_attention``). ``self_weight`` w adds
    w·v_i (self-attention only: castling's 0.5·v_i). ``mixes_heads`` kernels read all heads of a token at once
    (FLatten's norms over all heads' channels) or hold per-head parameters: they need exactly ``num_heads`` heads.
    """

    name: ClassVar[str] = ""
    normaliser: ClassVar[str] = "divide"
    self_weight: ClassVar[float] = 0.0
    mixes_heads: ClassVar[bool] = False

    def __init__(self, head_dim: int, num_heads: int = 1, *, eps: float = 1e-15,
                 chunk_size: int | str | None = "auto") -> None:
        super().__init__()
        if head_dim < 1 or num_heads < 1:
            raise ValueError(f"head_dim and num_heads must be >= 1, got head_dim={head_dim}, num_heads={num_heads}")
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.eps = eps
        self.chunk_size = chunk_size

    def tokens_per_chunk(self, x: Tensor) -> int | None:
        """``chunk_size`` tokens per chunk (None: one chunk); "auto": ``core.auto_chunk_size`` for the feature size,
        ``x``'s device and its batch × heads rows."""
        if self.chunk_size != "auto":
            return self.chunk_size
        return auto_chunk_size(self.feature_dim, x.device, x.shape[0] * x.shape[1])

    @property
    def normalize(self) -> bool:
        """Whether each row of the attention map sums to one (up to eps)."""
        return self.normaliser != "none"

    @property
    def unbounded_name(self) -> str | None:
        """The kernel's name when its output is not a convex combination of v (no dividing normaliser): its cast
        back to fp16 is checked for saturation (``core.to_input_dtype``)."""
        return None if self.normaliser == "divide" else self.name

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}, feature_dim={self.feature_dim}"

    # --- the formula ---------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """d_φ, the length of φ(x)."""
        return self.head_dim

    def phi(self, x: Tensor) -> Tensor:
        """φ(x) without its constant entries (those are ``constant``): what the linear core multiplies."""
        raise NotImplementedError

    def constant(self, dtype: torch.dtype) -> Tensor | None:
        """c such that the constant entries of φ(q) and φ(k) contribute c² to every similarity, or None.

        The core adds c²·Σ_j [v_j, 1] instead of appending constant columns to every token's features.
        """
        return None

    def features(self, x: Tensor) -> Tensor:
        """The full feature map φ(x), constant entries included (d_φ = ``feature_dim`` columns)."""
        c = self.constant(x.dtype)
        f = self.phi(x)
        return f if c is None else torch.cat([f, c.expand(*x.shape[:-1], 1)], dim=-1)

    def token_stats(self, q: Tensor, k: Tensor) -> Any:
        """Statistics over all tokens that φ needs (N, a logsumexp, the mean query...), computed once before
        chunking so that chunked and whole-sequence results agree."""
        return None

    def phi_q(self, q: Tensor, stats: Any) -> Tensor:
        return self.phi(q)

    def phi_k(self, k: Tensor, stats: Any) -> Tensor:
        return self.phi(k)

    @property
    def plain_division(self) -> bool:
        """Whether the output is num/(den + eps) as written (no ``finish`` of the kernel's own, e.g. l2vit's clamp)."""
        return self.normaliser == "divide" and type(self).finish is AttentionKernel.finish

    def phi_q_factored(self, q: Tensor, stats: Any) -> tuple[Tensor, Tensor | None]:
        """φ(q) as (f, t) with φ(q) = f/t and t > 0 per token (..., 1), or (φ(q), None). A divide-normalised
        kernel then reads f and never divides its query features (``core.linear_attention``)."""
        return self.phi_q(q, stats), None

    def similarity(self, q: Tensor, k: Tensor) -> Tensor:
        """The explicit (B, H, Nq, N) similarity, O(N²): the formula of ``qtvit.attention.reference``, or
        φ(q)·φ(k) for a kernel without one."""
        ref = reference_similarity(self, q, k)
        if ref is not None:
            return ref
        stats = self.token_stats(q, k)
        sim = self.phi_q(q, stats) @ self.phi_k(k, stats).transpose(-1, -2)
        c = self.constant(q.dtype)
        return sim if c is None else sim + c * c

    def state(self, kv: Tensor, ksum: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """What every query reads: num_i = φ(q_i)·S_num and den_i = φ(q_i)·S_den, by default S_num = KV
        (B, H, d_φ, dv) and S_den = Σ_j φ(k_j)ᵀ (B, H, d_φ, 1), None without a normaliser. ``finish`` receives den."""
        return kv, (None if ksum is None else ksum.transpose(-1, -2))

    def finish(self, num: Tensor, den: Tensor | None, vmean: Tensor | None) -> Tensor:
        """The output from numerator (..., dv), denominator (..., 1) and the mean of v (``normaliser``)."""
        return finish_normaliser(self.normaliser, num, den, vmean, self.eps)

    def post(self, out: Tensor) -> Tensor:
        """A map of the whole output after attention (castling's row L2 normalisation); identity by default."""
        return out

    def normalise_map(self, sim: Tensor) -> Tensor:
        """The explicit attention map: the normalised similarity plus ``self_weight``·I."""
        a = normalise_similarity(self.normaliser, sim, self.eps)
        if self.self_weight:
            a = a + self.self_weight * torch.eye(a.shape[-2], a.shape[-1], dtype=a.dtype, device=a.device)
        return a

    # --- the two paths -------------------------------------------------------------------------------------------
    def _check(self, q: Tensor, k: Tensor, v: Tensor | None = None) -> None:
        check_qkv(q, k, k[..., :1] if v is None else v)
        if q.shape[-1] != self.head_dim:
            raise ValueError(
                f"{self.name} kernel was built for head_dim={self.head_dim} but q has head dim {q.shape[-1]}; "
                f"create it with create_kernel({self.name!r}, head_dim={q.shape[-1]}, ...)"
            )
        if self.mixes_heads and q.shape[1] != self.num_heads:
            raise ValueError(f"{self.name} kernel was built for {self.num_heads} heads, input has {q.shape[1]}")
        if self.self_weight and q.shape[2] != k.shape[2]:
            raise ValueError(f"{self.name} adds {self.self_weight}·v_i: it needs self-attention (as many queries as "
                             f"keys), got {q.shape[2]} queries and {k.shape[2]} keys")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, numerator_map: NumeratorMap | None = None) -> Tensor:
        """Linear-time attention, (B, H, Nq, d), (B, H, N, d), (B, H, N, dv) -> (B, H, Nq, dv).

        ``numerator_map(features, tokens)``, e.g. RoPE, changes the numerator's features only (MALA, RALA)."""
        self._check(q, k, v)
        dtype = result_dtype(q, k, v)
        ct = compute_dtype(dtype)
        with fp32_island(q.device):
            out = self.linear(*(t if t.dtype == ct else t.to(ct) for t in (q, k, v)), numerator_map)
        return to_input_dtype(out, dtype, self.unbounded_name)

    def linear(self, q: Tensor, k: Tensor, v: Tensor, numerator_map: NumeratorMap | None = None) -> Tensor:
        """The linear path on inputs already in the compute dtype: the shared core."""
        return linear_attention(self, q, k, v, chunk_size=self.tokens_per_chunk(q), numerator_map=numerator_map)

    def forward_channels_first(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``forward`` on channel-major inputs, (B, H, d, Nq), (B, H, d, N), (B, H, dv, N) -> (B, H, dv, Nq): what an
        exported LiteMLA runs, whose q, k, v are slices of a (B, C, H, W) map. Kernels with a
        ``linear_channels_first`` (relu, qt) compute it without a token-major copy: onnxruntime then has no
        transposes to run around the attention; the others transpose to ``forward`` and back."""
        if type(self).linear_channels_first is AttentionKernel.linear_channels_first:
            return self.forward(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)).transpose(-1, -2)
        self._check(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        dtype = result_dtype(q, k, v)
        ct = compute_dtype(dtype)
        with fp32_island(q.device):
            out = self.linear_channels_first(*(t if t.dtype == ct else t.to(ct) for t in (q, k, v)))
        return to_input_dtype(out, dtype, self.unbounded_name)

    def linear_channels_first(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The linear path on channel-major inputs already in the compute dtype (``forward_channels_first``);
        optional: a kernel without one is transposed to ``linear``."""
        raise NotImplementedError

    def attention_map(self, q: Tensor, k: Tensor) -> Tensor:
        """The explicit normalised (B, H, Nq, N) attention map: the reference path and the figures' input."""
        self._check(q, k)
        ct = compute_dtype(result_dtype(q, k))
        with fp32_island(q.device):
            return self.normalise_map(self.similarity(q.to(ct), k.to(ct)))

    def explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The O(N²) reference output: attention_map(q, k) @ v (then ``post``)."""
        self._check(q, k, v)
        with fp32_island(q.device):
            dtype = result_dtype(q, k, v)
            out = self.post(explicit_attention(self.attention_map(q, k), v.to(compute_dtype(dtype))))
        return to_input_dtype(out, dtype, self.unbounded_name)
