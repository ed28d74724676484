"""The fused CPU kernel of qt (qtvit.attention.cpu_fused) against the shared core's path and float64."""
import warnings

import pytest
import torch

from qtvit.attention import cpu_fused, create_kernel
from qtvit.attention.base import AttentionKernel

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="the C++ extension could not be built here")


def core_path(kernel, q, k, v):
    """qt through the shared core (linear_attention's shifted read), bypassing the fused kernel."""
    return AttentionKernel.linear(kernel, q, k, v)


@pytest.mark.parametrize("d,nq,nk,b,h", [(16, 300, 300, 2, 3), (16, 37, 500, 1, 8), (32, 299, 299, 2, 2),
                                         (12, 64, 260, 3, 1), (64, 50, 270, 1, 2)])
def test_fused_qt_equals_the_core_and_float64(d, nq, nk, b, h):
    g = torch.Generator().manual_seed(d + nq)
    kernel = create_kernel("qt", head_dim=d, num_heads=h)
    kernel.scale.data.fill_(0.6)
    q, k, v = (torch.randn(b, h, n, d, generator=g) * 2 for n in (nq, nk, nk))
    q[0, 0, 3] = 0  # an all-zero query and key: the floored norms keep them finite
    k[0, -1, 7] = 0
    with torch.no_grad():
        assert cpu_fused.usable(q, k, v, kernel.scale)
        fast = kernel(q, k, v)
        core = core_path(kernel, q, k, v)
        ref = kernel.double()(q.double(), k.double(), v.double())
    assert fast.shape == (b, h, nq, d) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, core, rtol=1e-5, atol=1e-6)
    assert (fast.double() - ref).abs().max() / ref.abs().max() < 1e-5


def test_fused_qt_reads_strided_views_of_one_qkv_tensor():
    """LiteMLA hands the kernel q, k, v as views of one token-major (B, E, N, 3d) tensor: no copies needed."""
    g = torch.Generator().manual_seed(0)
    kernel = create_kernel("qt", head_dim=16, num_heads=4)
    q, k, v = torch.randn(2, 4, 257, 48, generator=g).split(16, dim=-1)
    with torch.no_grad():
        assert not q.is_contiguous() and cpu_fused.usable(q, k, v, kernel.scale)
        torch.testing.assert_close(kernel(q, k, v), core_path(kernel, q, k, v), rtol=1e-5, atol=1e-6)


def test_fused_path_is_left_to_autograd_tracing_and_other_dtypes():
    kernel = create_kernel("qt", head_dim=16, num_heads=2)
    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))
    assert not cpu_fused.usable(q, k, v, kernel.scale)  # the learnable scale wants its gradient
    with torch.no_grad():
        assert cpu_fused.usable(q, k, v, kernel.scale)
        assert not cpu_fused.usable(q.double(), k.double(), v.double(), kernel.scale)
        assert not cpu_fused.usable(q.half(), k.half(), v.half(), kernel.scale)
        assert not cpu_fused.usable(q.transpose(-1, -2), k, v, kernel.scale)  # channels not unit-stride
        assert not cpu_fused.usable(torch.randn(1, 2, 300, 65), torch.randn(1, 2, 300, 65), v, kernel.scale)
        small = [t[:, :, :cpu_fused.MIN_TOKENS - 1] for t in (q, k, v)]
        assert not cpu_fused.usable(*small, kernel.scale)  # a few tokens: the torch ops, no build
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        kernel(q, k, v)
    assert counter.get_total_flops() > 2 * 2 * 300 * 16 * 16  # the state and its read are counted
    out = kernel(q, k, v)
    assert out.grad_fn is not None  # training takes the core path, with gradients
    with torch.no_grad():
        traced = torch.jit.trace(kernel, (q, k, v), check_trace=False)
    q2, k2, v2 = (torch.randn(1, 2, 320, 16) for _ in range(3))
    with torch.no_grad():  # the trace recorded torch ops (not the extension's opaque call): valid for new inputs
        torch.testing.assert_close(traced(q2, k2, v2), core_path(kernel, q2, k2, v2), rtol=1e-5, atol=1e-6)


def test_disabled_block_takes_the_core_path():
    kernel = create_kernel("qt", head_dim=16, num_heads=2)
    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))
    with torch.no_grad():
        assert cpu_fused.usable(q, k, v, kernel.scale)
        with cpu_fused.disabled():
            assert not cpu_fused.usable(q, k, v, kernel.scale)
        assert cpu_fused.usable(q, k, v, kernel.scale)


def test_a_failed_build_warns_once_and_keeps_the_core_path(monkeypatch):
    import torch.utils.cpp_extension as ext

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(cpu_fused, "_module", None)
    monkeypatch.setattr(cpu_fused, "_failed", False)
    monkeypatch.setattr(ext, "load_inline", no_compiler)
    kernel = create_kernel("qt", head_dim=16, num_heads=2)
    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="could not be built .*no C\\+\\+ compiler.*eager path"):
        with torch.no_grad():
            out = kernel(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        with torch.no_grad():
            torch.testing.assert_close(kernel(q, k, v), out)
    assert not cpu_fused.available()
    with torch.no_grad():
        torch.testing.assert_close(out, core_path(kernel, q, k, v))
