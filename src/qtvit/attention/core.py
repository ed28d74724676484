"""The attention core: one linear-attention path shared by every linear kernel, softmax through SDPA, and the
explicit O(N²) path that serves as their reference.

Numerical care lives here and only here:
- half-precision inputs are computed in an fp32 island (autocast off) and cast back to the input dtype; float64
  stays float64 so the parity tests can run at 1e-12;
- per-token norms (``l2norm``, ``normalize``) floor Σx² at the dtype's smallest normal number before the square
  root, so an all-zero query or key token has finite gradients (sqrt has an infinite slope at 0) and every
  non-zero token gets exactly the plain ‖x‖₂;
- the cast back saturates at the dtype's largest finite value instead of overflowing to inf (an inf activation
  would stop mixed-precision training for good: every step's loss would be inf). Normalised kernels return
  convex-like combinations of v and never reach it; the others (normaliser "none", "subtract", "magnitude": mean,
  cosine, inline, mala, ...) scale with |q||k||v|: the fp32 island keeps their intermediate sums exact, but a true
  output beyond fp16's 65504 cannot be represented, and the saturated value is off by up to 100 %. That case warns
  (``AttentionRangeWarning``, once per kernel); run such kernels in bf16 or fp32.

Shapes: q (B, H, Nq, d), k (B, H, N, d), v (B, H, N, dv) -> (B, H, Nq, dv). Non-causal.
"""
from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .base import AttentionKernel

# A map applied to φ(q) or φ(k) of the tokens ``slice`` for the numerator only (e.g. RoPE after the kernel).
NumeratorMap = Callable[[Tensor, slice], Tensor]

# Tokens per chunk of the two linear-attention passes: bounds the feature maps' memory to
# chunk_size * d_phi per head instead of N * d_phi (matters for taylor2, whose d_phi is 1 + d + d(d+1)/2).
DEFAULT_CHUNK_SIZE = 4096
# The automatic chunk size ("auto", the kernels' default) keeps about this many features per head in a chunk, so
# that wide feature maps stay in cache (taylor2, d 16: 856 tokens, measured 2x faster than 4096 on CPU).
CHUNK_FEATURES = 2 ** 17


# On a GPU chunks only bound memory (no cache to fit): each chunk costs kernel launches, which dominate small chunks
# (taylor2 at N = 16384 in 856-token chunks: 6.5 ms on an H100, 4x the one-chunk peer). There a chunk holds up to
# this many features over the whole batch and all heads (256 MiB in fp32).
CUDA_CHUNK_FEATURES = 2 ** 26


def auto_chunk_size(feature_dim: int, device: torch.device | None = None, rows: int = 1) -> int:
    """Tokens per chunk for a feature map of ``feature_dim``: on CPU CHUNK_FEATURES / d_φ, within [256,
    DEFAULT_CHUNK_SIZE]; on CUDA CUDA_CHUNK_FEATURES / (rows · d_φ), at least 256 (``rows``: batch × heads)."""
    d = max(feature_dim, 1)
    if device is not None and device.type == "cuda":
        return max(256, CUDA_CHUNK_FEATURES // (max(rows, 1) * d))
    return max(256, min(DEFAULT_CHUNK_SIZE, CHUNK_FEATURES // d))


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """The output dtype of mixed inputs, promoted as torch ops do (e.g. bf16 q and v with an fp32 k -> fp32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention is computed in: float64 stays, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fp32_island(device: torch.device) -> ContextManager:
    """Autocast off: the k^T v sums and the division overflow in fp16 (EfficientViT issues #15 and #110). Where
    autocast is not on, nothing to switch off (entering the context costs ~10 µs a call)."""
    if not _autocast_enabled(device.type):
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class AttentionRangeWarning(RuntimeWarning):
    """An attention output beyond its dtype's range was saturated at the largest finite value (see the module
    docstring)."""


_warned: set[str] = set()


def to_input_dtype(x: Tensor, dtype: torch.dtype, unbounded: str | None = None) -> Tensor:
    """Cast the result back to the input dtype, saturating instead of overflowing to inf; ``unbounded``: the name of
    a kernel whose output is not a convex combination of v, checked (one device sync, eager mode only) and warned
    about once when it saturated."""
    if x.dtype == dtype:
        return x
    if dtype in (torch.float16, torch.bfloat16):
        big = torch.finfo(dtype).max
        if unbounded and unbounded not in _warned and not _tracing() and bool((x.abs() > big).any()):
            _warned.add(unbounded)
            name = str(dtype).removeprefix("torch.")
            warnings.warn(f"the {unbounded} attention kernel's output reaches {x.abs().max().item():.3g}, beyond "
                          f"{name}'s largest value {big:g}: it was saturated there and is wrong; run this kernel in "
                          "bfloat16 or float32 (e.g. --amp bf16), or pick a normalised kernel",
                          AttentionRangeWarning, stacklevel=3)
        x = x.clamp(-big, big)
    return x.to(dtype)


def _tracing() -> bool:
    """True while torch.jit, torch.compile or torch.export records the graph: no data-dependent Python there."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a ValueError naming what does not fit in q (B, H, Nq, d), k (B, H, N, d), v (B, H, N, dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (batch, heads, tokens, channels), got shape {tuple(t.shape)}; "
                "split heads first, e.g. x.view(B, N, H, d).transpose(1, 2)"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"batch and head sizes must agree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of tokens: k has {k.shape[2]}, v has {v.shape[2]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"empty sequence: q has {q.shape[2]} tokens, k has {k.shape[2]}; attention needs at least 1")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(f"empty channel dimension: q/k head dim {q.shape[-1]}, v head dim {v.shape[-1]}")


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    size = n if not chunk_size or chunk_size >= n else chunk_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


NORMALISERS = ("none", "divide", "subtract", "magnitude")


def linear_attention(
    kernel: "AttentionKernel", q: Tensor, k: Tensor, v: Tensor, *, chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    numerator_map: "NumeratorMap | None" = None,
) -> Tensor:
    """Linear attention from the state KV = Σ_j φ(k_j)ᵀ v_j and the key sum Σ_j φ(k_j), read by every query.

    With num_i = φ(q_i)·KV and den_i = φ(q_i)·Σ_j φ(k_j) (Σ_j Sim(q_i, k_j)), the kernel's ``normaliser`` gives
    - "none":      O_i = num_i                                    (Hydra, castling, mean)
    - "divide":    O_i = num_i / (den_i + eps)                    (EfficientViT, QT-ViT, FLatten, RALA...)
    - "subtract":  O_i = num_i + (1 - den_i)·v̄                    (InLine: Σ_j [Sim_ij - mean_s Sim_is + 1/N] v_j)
    - "magnitude": O_i = num_i·(1 + 1/(den_i + eps)) - den_i·v̄    (MALA)
    with v̄ the mean of v over the keys. Constant feature entries (``kernel.constant``, c) add c²·Σ_j v_j to num and
    c²·N to den instead of a column on every token. ``numerator_map(features, tokens)`` (e.g. RoPE, applied after φ)
    changes the numerator's features only, as MALA's and RALA's released code do; the denominator keeps φ.

    Cost O(N·d_φ·dv) time; memory O(d_φ·dv) for the state plus one chunk of features (``chunk_size`` tokens).
    Inputs are already in the compute dtype.
    """
    stats = kernel.token_stats(q, k)
    mode = kernel.normaliser
    n = k.shape[2]
    kv = ksum = None
    for sl in _chunks(n, chunk_size):  # pass 1: the state, summed over key chunks
        fk = kernel.phi_k(k if sl.stop - sl.start == n else k[:, :, sl], stats)
        fkn = fk if numerator_map is None else numerator_map(fk, sl)
        part = fkn.transpose(-1, -2) @ (v if sl.stop - sl.start == n else v[:, :, sl])
        kv = part if kv is None else kv + part
        if mode != "none":
            s = fk.sum(dim=2, keepdim=True)
            ksum = s if ksum is None else ksum + s
    # What every query reads: num from S_num = KV, den from S_den = Σφ(k)ᵀ (two products: measured faster on CPU
    # than one product with [KV | Σφ(k)ᵀ] and a strided division).
    s_num, s_den = kernel.state(kv, ksum)
    c = kernel.constant(q.dtype)
    c2 = None if c is None else c * c  # constant features: c²·Σ_j v_j and c²·N instead of a column on every token
    # The plain division reads the state shifted by its constant part (``_shift_state``): one pass over the
    # queries' outputs fewer, and a query map φ(q) = f/t (qt: x²/‖x²‖ under autograd) is read as f.
    shifted = mode == "divide" and numerator_map is None and kernel.plain_division and not kernel.self_weight
    if shifted:
        s_num, mean, bias = _shift_state(s_num, s_den, c2, v, n, kernel.eps)
    vsum = v.sum(dim=2, keepdim=True) if (not shifted and (c2 is not None or mode in ("subtract", "magnitude"))) \
        else None
    vmean = vsum / n if mode in ("subtract", "magnitude") else None
    outs = []
    nq = q.shape[2]
    for sl in _chunks(nq, chunk_size):  # pass 2: every query reads the state
        qc = q if sl.stop - sl.start == nq else q[:, :, sl]
        if shifted:
            f, t = kernel.phi_q_factored(qc, stats)
            outs.append(_read_shifted(f, t, s_num, s_den, mean, bias))
            continue
        fq = kernel.phi_q(qc, stats)
        num = (fq if numerator_map is None else numerator_map(fq, sl)) @ s_num
        den = None if s_den is None else fq @ s_den
        if c2 is not None:
            num = num.add_(c2 * vsum)
            den = None if den is None else den.add_(c2 * n)
        if kernel.self_weight:
            num = num + kernel.self_weight * v[:, :, sl]
        outs.append(kernel.finish(num, den, vmean))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return kernel.post(out)


def inplace_ok(*tensors: Tensor) -> bool:
    """Whether fresh temporaries may be overwritten in place: outside autograd (no_grad, inference) or when nothing
    requires a gradient. Each in-place step saves an N-sized allocation, which dominates linear attention on CPU."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _shift_state(s_num: Tensor, s_den: Tensor, c2: Tensor | None, v: Tensor, n: int,
                 eps: float) -> tuple[Tensor, Tensor | None, Tensor | float]:
    """The state of the plain division O = (φ(q)·KV + c²Σv)/(φ(q)·Σφ(k) + b), b = c²N + eps, read as
    O = m + φ(q)·(KV − Σφ(k)ᵀm)/(φ(q)·Σφ(k) + b) with m = c²Σv/b (subtract m·den from num: the c²Σv cancels).
    Returns (KV − Σφ(k)ᵀm, m, b); without constant features (c2 None) m is None and b = eps."""
    if c2 is None:
        return s_num, None, eps
    bias = c2 * n + eps
    mean = v.sum(dim=2, keepdim=True) * (c2 / bias)
    return torch.addcmul(s_num, s_den, mean, value=-1), mean, bias  # s_den (dφ, 1) * mean (1, dv): Σφ(k)ᵀm


def _read_shifted(f: Tensor, t: Tensor | None, s_num: Tensor, s_den: Tensor, mean: Tensor | None,
                  bias: Tensor | float) -> Tensor:
    """O = m + f·S_num/(f·S_den + t·b) for φ(q) = f/t (t None: 1), the state from ``_shift_state``: two products
    and one fused m + num/den, in place outside autograd."""
    num, den = f @ s_num, f @ s_den
    den = den.add_(bias) if t is None else den.addcmul_(t, bias if isinstance(bias, Tensor) else den.new_tensor(bias))
    if mean is None:
        return num.div_(den) if inplace_ok(num, den) else num / den
    if inplace_ok(num, den, mean):
        return torch.addcdiv(mean, num, den, out=num)
    return num / den + mean  # not addcdiv: its gradient squares den, which underflows for an all-zero query


def finish_normaliser(mode: str, num: Tensor, den: Tensor | None, vmean: Tensor | None, eps: float) -> Tensor:
    """The output from numerator and denominator for each ``normaliser`` (see ``linear_attention``)."""
    if mode == "none":
        return num
    if mode == "divide":
        return num.div_(den + eps) if inplace_ok(num, den) else num / (den + eps)
    if mode == "subtract":
        return num + (1 - den) * vmean
    if mode == "magnitude":
        return num * (1 + 1 / (den + eps)) - den * vmean
    raise ValueError(f"unknown normaliser {mode!r}; use one of {', '.join(NORMALISERS)}")


def normalise_similarity(mode: str, sim: Tensor, eps: float) -> Tensor:
    """The explicit attention map of each ``normaliser``: the weights a_ij with O_i = Σ_j a_ij v_j."""
    if mode == "none":
        return sim
    z = sim.sum(dim=-1, keepdim=True)
    if mode == "divide":
        return sim / (z + eps)
    n = sim.shape[-1]
    if mode == "subtract":
        return sim - z / n + 1 / n
    if mode == "magnitude":
        return sim * (1 + 1 / (z + eps)) - z / n
    raise ValueError(f"unknown normaliser {mode!r}; use one of {', '.join(NORMALISERS)}")


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """exp(q·k/√d)-weighted average of v through torch's fused scaled_dot_product_attention."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def explicit_attention(attn: Tensor, v: Tensor) -> Tensor:
    """Apply an explicit (B, H, Nq, N) attention map to v: the O(N²) reference path."""
    return attn @ v


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


def l2norm(x: Tensor, dim: int = -1) -> Tensor:
    """‖x‖₂ over axis ``dim`` (default the last), keepdim, with finite gradients at x = 0.

    Σx² is floored at the dtype's smallest normal number before the square root: the same value for every token
    with Σx² above it, and a zero gradient (not 0·∞ = NaN) for an all-zero one. On channel-major views (and over
    another axis than the last) the sum of squares, which adds whole rows of tokens: torch's vector norm is ~50×
    slower there (7 against 0.1 ms for (8, 4096, 16) here), and in onnxruntime it is a strided ReduceL2, slower
    than Mul + ReduceSum; on unit-stride channels the vector norm, ~1.4× faster than the sum of squares, floored
    at √tiny (the same value).
    """
    tiny = torch.finfo(x.dtype).tiny
    if dim in (-1, x.dim() - 1) and (x.stride(-1) == 1 or x.shape[-1] == 1):
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(math.sqrt(tiny))
    sq = (x * x).sum(dim=dim, keepdim=True)
    return sq.clamp_min(tiny).sqrt()


def l2norm_heads(x: Tensor) -> Tensor:
    """‖x‖₂ over the channels of all heads of each token, (B, H, N, d) -> (B, 1, N, 1), floored as ``l2norm``."""
    sq = (x * x).sum(dim=(1, 3), keepdim=True)
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


def normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """x/‖x‖₂ over the last axis, as F.normalize (norm clamped at eps), with finite gradients at x = 0."""
    return x / l2norm(x).clamp_min(eps)


def kronecker_square(x: Tensor) -> Tensor:
    """K_r(x) = vec(x ⊗ x): all products x_i x_j, so ⟨K_r(a), K_r(b)⟩ = ⟨a, b⟩² (QT-ViT Eq. 5-6)."""
    return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
