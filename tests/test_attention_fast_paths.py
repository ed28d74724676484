"""The fast paths of the linear core against the formulas they replace (issue 11.3): qt's in-place key
normalisation, and the plain division read as m + φ(q)·(KV − Σφ(k)ᵀm)/den. Each fast path runs outside autograd
only, so every test compares it with the autograd path or with the explicit O(N²) reference."""
import pytest
import torch

from conftest import rel_err
from qtvit.attention import core, create_kernel

# divide-normalised kernels with constant features: the shifted read applies to all of them
SHIFTED = ["qt", "taylor2", "taylor1", "angular", "qt_paper", "qt_pool", "qt_chunk", "qt_random"]


def qkv(n=37, nq=None, d=8, dv=5, h=3, dtype=torch.float64, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, h, nq or n, d, generator=g, dtype=dtype) * scale
    k = torch.randn(2, h, n, d, generator=g, dtype=dtype) * scale
    v = torch.randn(2, h, n, dv, generator=g, dtype=dtype)
    return q, k, v


def _paths_agree(m, q, k, v):
    ref = m.explicit(q, k, v)
    with torch.no_grad():
        fast = m(q, k, v)
    slow = m(q.clone().requires_grad_(), k, v)
    assert rel_err(fast, ref) < 1e-12 and rel_err(slow.detach(), ref) < 1e-12


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("name", SHIFTED)
def test_shifted_read_equals_explicit_and_autograd_path(name, chunk):
    """no_grad reads in place, with gradients on out of place: both equal the explicit reference in float64,
    self- and cross-attention, one chunk or several, with all-zero query and key tokens."""
    m = create_kernel(name, head_dim=8, num_heads=3, chunk_size=chunk).double()
    for nq in (None, 11):
        q, k, v = qkv(nq=nq)
        q[:, :, 0] = 0
        k[:, :, 3] = 0
        _paths_agree(m, q, k, v)


@pytest.mark.parametrize("chunk", [None, 300])
def test_qt_keys_equal_explicit_with_zero_and_underflowing_tokens(chunk):
    """Keys of 2 x 4 x 700 x 16 (one chunk, or chunks of 300 with a last one of 100), with all-zero and
    underflowing key tokens, against the explicit map and the autograd path."""
    m = create_kernel("qt", head_dim=16, num_heads=4, scale=0.9, chunk_size=chunk).double()
    q, k, v = qkv(n=700, d=16, dv=16, h=4, scale=1.0)
    k[:, :, 5] = 0
    k[0, 1, 400] = 1e-160  # x⁴ underflows in float64: floored, as the formula does
    q[:, :, 2] = 0
    _paths_agree(m, q, k, v)


def test_qt_fp32_inference_matches_float64_on_a_long_sequence():
    """fp32, N = 4096 over 8 heads (the issue's benchmark shape): the fast path stays within fp32 resolution."""
    q, k, v = qkv(n=4096, d=16, dv=16, h=8, dtype=torch.float32, scale=1.0)
    m = create_kernel("qt", head_dim=16, num_heads=8, scale=0.8)
    with torch.no_grad():
        out = m(q, k, v)
        ref = m.double()(q.double(), k.double(), v.double())
    assert out.dtype == torch.float32
    assert rel_err(out.double(), ref) < 1e-5


def test_qt_gradients_unchanged_by_the_fast_paths():
    """Training takes the autograd path; its gradients still equal the explicit reference's."""
    m = create_kernel("qt", head_dim=8, num_heads=3, scale=1.3).double()
    q, k, v = (t.requires_grad_() for t in qkv(n=9))
    w = torch.randn(2, 3, 9, 5, dtype=torch.float64)
    g_fast = torch.autograd.grad((m(q, k, v) * w).sum(), [q, k, v, m.scale])
    g_ref = torch.autograd.grad((m.explicit(q, k, v) * w).sum(), [q, k, v, m.scale])
    for a, b in zip(g_fast, g_ref):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("zero_token", [False, True])
def test_l2norm_same_in_either_layout_with_finite_gradients(zero_token):
    # token-major memory takes torch's vector norm, channel-major views (LiteMLA's layout) the sum of squares
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, 16, generator=g, dtype=torch.float64)
    if zero_token:
        x[0, 1, 5] = 0
    token_major = x.clone().requires_grad_(True)
    channel_major = x.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(True)
    assert channel_major.stride(-1) != 1
    a, b = core.l2norm(token_major), core.l2norm(channel_major)
    assert rel_err(a, b) < 1e-14
    (a.sum() + (x.sum(-1, keepdim=True) / a).sum()).backward()
    (b.sum() + (x.sum(-1, keepdim=True) / b).sum()).backward()
    assert torch.isfinite(token_major.grad).all() and torch.isfinite(channel_major.grad).all()
    assert rel_err(token_major.grad, channel_major.grad) < 1e-12


def test_qt_same_output_for_channel_major_inputs():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 16, 300, generator=g, dtype=torch.float64).transpose(-1, -2) for _ in range(3))
    kernel = create_kernel("qt", head_dim=16, num_heads=2).double()
    ref = kernel(q.contiguous(), k.contiguous(), v.contiguous())
    assert rel_err(kernel(q, k, v), ref) < 1e-12
    assert rel_err(kernel.explicit(q, k, v), ref) < 1e-12


def test_auto_chunks_are_cache_sized_on_cpu_and_memory_bounded_on_cuda():
    from qtvit.attention.core import CUDA_CHUNK_FEATURES, auto_chunk_size

    d_phi = create_kernel("taylor2", head_dim=16).feature_dim  # 1 + 16 + 136 = 153
    assert auto_chunk_size(d_phi) == 2 ** 17 // d_phi  # 856 tokens: fits the CPU's cache
    cuda = torch.device("cuda")  # arithmetic only: no GPU needed
    assert auto_chunk_size(d_phi, cuda, rows=8) == CUDA_CHUNK_FEATURES // (8 * d_phi) > 16384  # one chunk there
    assert auto_chunk_size(d_phi, cuda, rows=8 * 64) * 8 * 64 * d_phi <= CUDA_CHUNK_FEATURES  # big batches split
    assert auto_chunk_size(10 ** 9, cuda, rows=10 ** 6) == 256  # never below 256 tokens


def _channels_first(m, q, k, v):
    cf = [t.transpose(-1, -2).contiguous() for t in (q, k, v)]
    return m.forward_channels_first(*cf).transpose(-1, -2)


@pytest.mark.parametrize("name", ["qt", "relu", "elu"])
def test_channels_first_path_equals_explicit(name):
    """The exported graphs' layout (qt and relu have their own channel-major formula, elu transposes): float64
    against the explicit reference, self- and cross-attention, with all-zero query and key tokens."""
    m = create_kernel(name, head_dim=8, num_heads=3).double()
    for nq in (None, 11):
        q, k, v = qkv(nq=nq)
        q[:, :, 0] = 0
        k[:, :, 3] = 0
        assert rel_err(_channels_first(m, q, k, v), m.explicit(q, k, v)) < 1e-12


def test_channels_first_path_dtypes_and_shapes():
    """bf16 inputs run in the fp32 island and come back in bf16; a wrong head dim is the usual clear error."""
    m = create_kernel("qt", head_dim=8, num_heads=3)
    q, k, v = qkv(dtype=torch.float32)
    out = _channels_first(m, *(t.bfloat16() for t in (q, k, v)))
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), m.explicit(q, k, v)) < 2e-2
    with pytest.raises(ValueError, match="head_dim=8 but q has head dim 4"):
        m.forward_channels_first(*(t[..., :4].transpose(-1, -2) for t in (q, k, v)))
