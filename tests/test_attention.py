"""The kernel zoo against its formulas: linear path == explicit O(N²) path, identities, precision, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from qtvit.attention import attend, attention_map, create_kernel, kronecker_square, list_kernels

ALL = list_kernels()
LINEAR = [k for k in ALL if k != "softmax"]
EXPECTED = {"softmax", "relu", "elu", "cosine", "mean", "sigmoid_softmax", "angular", "taylor1", "taylor2", "qt",
            "qt_paper", "qt_pool", "qt_chunk", "qt_random", "focused", "l2vit", "hydra", "castling", "aft_simple",
            "polaformer", "inline", "mala", "rala"}
DV_EQ_D = {"aft_simple", "hydra", "polaformer"}  # element-wise operators need dv = d; polarity halves an even dv


def fit_dv(name, d, dv):
    return d if name in DV_EQ_D else dv


def qkv(b=2, h=3, n=29, d=8, dv=5, nq=None, scale=0.7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq or n, d, generator=g, dtype=dtype) * scale
    k = torch.randn(b, h, n, d, generator=g, dtype=dtype) * scale
    v = torch.randn(b, h, n, dv, generator=g, dtype=dtype)
    return q, k, v


def kernel(name, d=8, h=3, **kw):
    torch.manual_seed(1)
    m = create_kernel(name, head_dim=d, num_heads=h, **kw).double()
    with torch.no_grad():  # move learnable parameters off their initial values so they take part in the test
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return m


def test_registry_names():
    assert set(ALL) == EXPECTED


@pytest.mark.parametrize("name", ALL)
def test_linear_equals_explicit_float64(name):
    m = kernel(name)
    q, k, v = qkv(dv=fit_dv(name, 8, 5))
    assert rel_err(m(q, k, v), m.explicit(q, k, v)) < 1e-10


@pytest.mark.parametrize("name", ALL)
def test_cross_attention_and_chunking(name):
    m = kernel(name)
    nq = 23 if m.self_weight else 11  # castling's 0.5·v_i term is self-attention only
    dv = fit_dv(name, 8, 5)
    q, k, v = qkv(n=23, nq=nq, dv=dv)
    ref = m.explicit(q, k, v)
    assert ref.shape == (2, 3, nq, dv)
    m.chunk_size = 4  # several chunks, uneven last one
    assert rel_err(m(q, k, v), ref) < 1e-10


@pytest.mark.parametrize("name", ALL)
def test_gradients_linear_equal_explicit(name):
    m = kernel(name, d=4, h=2)
    dv = fit_dv(name, 4, 3)
    q, k, v = (t.requires_grad_() for t in qkv(b=1, h=2, n=7, d=4, dv=dv, seed=3))
    w = torch.randn(1, 2, 7, dv, dtype=torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad((m(q, k, v) * w).sum(), [q, k, v, *params])
    g_ref = torch.autograd.grad((m.explicit(q, k, v) * w).sum(), [q, k, v, *params])
    for a, b in zip(g_fast, g_ref):
        assert rel_err(a, b) < 1e-10
    assert torch.autograd.gradcheck(lambda q, k, v: m(q, k, v), (q, k, v))


@pytest.mark.parametrize("name", ALL)
def test_attention_map_rows(name):
    m = kernel(name)
    q, k, _ = qkv()
    a = m.attention_map(q, k)
    assert a.shape == (2, 3, 29, 29)
    if m.normalize and name != "l2vit" and m.eps <= 1e-12:  # eps 1e-6 (released FLatten, PolaFormer, MALA, RALA):
        # rows sum to z/(z + eps), checked at eps = 0 in test_rows_sum_to_one_without_eps
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 29, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(attention_map(q, k, kernel=name) @ torch.eye(29, dtype=torch.float64),
                               create_kernel(name, head_dim=8, num_heads=3).double().attention_map(q, k))


@pytest.mark.parametrize("name", [k for k in LINEAR if create_kernel(k, head_dim=8).normalize and k != "l2vit"])
def test_rows_sum_to_one_without_eps(name):
    q, k, _ = qkv()
    a = kernel(name, eps=0.0).attention_map(q, k)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 29, dtype=torch.float64), rtol=0, atol=1e-12)


def test_kronecker_identity():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 100, 16, generator=g, dtype=torch.float64)
    assert kronecker_square(a).shape == (100, 256)
    torch.testing.assert_close((kronecker_square(a) * kronecker_square(b)).sum(-1), (a * b).sum(-1) ** 2,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [4, 16, 32])
def test_taylor2_features_give_second_order_taylor(d):
    m = create_kernel("taylor2", head_dim=d).double()
    q, k, _ = qkv(b=1, h=1, n=50, d=d)
    fq, fk = m.features(q), m.features(k)
    assert fq.shape[-1] == 1 + d + d * (d + 1) // 2 == m.feature_dim  # the symmetric map (was (d + 1)² + 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    torch.testing.assert_close(fq @ fk.transpose(-1, -2), 1 + s + s * s / 2, rtol=1e-12, atol=1e-12)
    # and the kernel is close to exp(s) where s is small
    small = 0.05 * q @ k.transpose(-1, -2) / math.sqrt(d)
    fq, fk = m.features(0.05 * q), m.features(k)
    assert (fq @ fk.transpose(-1, -2) - torch.exp(small)).abs().max() < 1e-3


def test_qt_kernel_is_cosine_of_squares_plus_scale_squared():
    m = create_kernel("qt", head_dim=16, scale=0.75).double()
    q, k, _ = qkv(b=1, h=1, n=40, d=16)
    sim = m.features(q) @ m.features(k).transpose(-1, -2)
    q2, k2 = q * q, k * k
    cos = (q2 @ k2.transpose(-1, -2)) / (q2.norm(dim=-1, keepdim=True) * k2.norm(dim=-1).unsqueeze(-2))
    torch.testing.assert_close(sim, cos + 0.5625, rtol=1e-12, atol=1e-12)
    assert m.feature_dim == 17


def test_qt_matches_official_formula():
    """The AMD code's steps: norm, square, norm, cat scale, pad v with ones, kᵀv, q(kᵀv), divide (eps 1e-15)."""
    eps = 1e-15
    q, k, v = qkv(b=2, h=4, n=49, d=16, dv=16)
    s = torch.tensor(1.25, dtype=torch.float64)

    def feat(x):
        x = x / (x.norm(dim=-1, keepdim=True) + eps)
        x = x ** 2
        x = x / (x.norm(dim=-1, keepdim=True) + eps)
        return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype) * s], dim=-1)

    kv = feat(k).transpose(-1, -2) @ F.pad(v, (0, 1), value=1)
    out = feat(q) @ kv
    ref = out[..., :-1] / (out[..., -1:] + eps)
    m = create_kernel("qt", head_dim=16, num_heads=4, scale=1.25).double()
    assert rel_err(m(q, k, v), ref) < 1e-13


def test_relu_matches_efficientvit_formula():
    q, k, v = qkv(d=16, dv=16)
    qr, kr = F.relu(q), F.relu(k)
    ref = (qr @ (kr.transpose(-1, -2) @ v)) / ((qr @ kr.sum(2, keepdim=True).transpose(-1, -2)) + 1e-15)
    assert rel_err(attend(q, k, v, kernel="relu"), ref) < 1e-13


@pytest.mark.parametrize("scale", [0.5, 30.0])  # clamp active, then inactive
def test_l2vit_matches_official_formula(scale):
    q, k, v = qkv(h=3, d=32, dv=32, n=64, scale=scale)
    m = create_kernel("l2vit", head_dim=32, num_heads=3).double()
    with torch.no_grad():
        m.temperature.copy_(torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1))
    qr, kr = F.relu(q), F.relu(k)
    denom = torch.clamp(qr @ kr.transpose(-2, -1).sum(dim=-1, keepdim=True), 1e2)
    ref = qr @ ((kr.transpose(-2, -1) @ v) * m.temperature.double()) / denom
    assert rel_err(m(q, k, v), ref) < 1e-13


def test_qt_paper_similarity_formula():
    m = create_kernel("qt_paper", head_dim=16, alpha=0.75, beta=0.5, gamma=1.5).double()
    q, k, _ = qkv(b=1, h=1, n=30, d=16)
    assert m.feature_dim == 34
    s = q @ k.transpose(-1, -2) / 4
    expect = 0.5 * (0.5625 * ((q * q) @ (k * k).transpose(-1, -2)) + 2 * 0.25 * s + 2.25 + 1)
    torch.testing.assert_close(m.features(q) @ m.features(k).transpose(-1, -2), expect, rtol=1e-12, atol=1e-12)
    assert not m.beta.requires_grad  # β = 0 in the paper's experiments: frozen unless asked


def test_reduced_kernels_are_exact_when_their_assumption_holds():
    """pool is exact for inputs constant within each pool window; chunk is exact for a single chunk."""
    d = 8
    q, k, v = qkv(b=1, h=1, n=20, d=d // 2, dv=3)
    qp, kp = q.repeat_interleave(2, -1), k.repeat_interleave(2, -1)
    exact = create_kernel("taylor2", head_dim=d).double()
    pool = create_kernel("qt_pool", head_dim=d, pool=2).double()
    torch.testing.assert_close(pool.attention_map(qp, kp), exact.attention_map(qp, kp), rtol=1e-12, atol=1e-14)
    q, k, v = qkv(b=1, h=1, n=20, d=d, dv=3)
    one = create_kernel("qt_chunk", head_dim=d, chunks=1).double()
    torch.testing.assert_close(one.attention_map(q, k), exact.attention_map(q, k), rtol=1e-12, atol=1e-14)
    assert pool.feature_dim == 16 + 2 * d + 2 and one.feature_dim == d * d + 2 * d + 2


def test_qt_random_is_unbiased_over_seeds():
    d = 6
    q, k, _ = qkv(b=1, h=1, n=5, d=d)
    s2 = (q @ k.transpose(-1, -2) / math.sqrt(d)) ** 2
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    # Sim = 1 + s + Q(q)·Q(k)/2: the estimate of s² is 2 (Sim - 1 - s)
    est = torch.stack([2 * (create_kernel("qt_random", head_dim=d, seed=i).double().similarity(q, k) - 1 - s)
                       for i in range(2000)]).mean(0)
    assert rel_err(est, s2) < 0.1  # deterministic seeds: a fixed number, not a flaky one


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_half_precision_large_inputs_stay_finite(name, dtype):
    n = 16384 if name != "softmax" else 4096  # softmax is the O(N²) baseline: a smaller N keeps the test fast
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(1, 2, n, 16, generator=g) * 2 - 1) * 1e3 for _ in range(3))
    m = create_kernel(name, head_dim=16, num_heads=2)
    out = m(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and out.shape == (1, 2, n, 16)
    assert torch.isfinite(out).all()
    if m.normalize and name not in ("taylor1", "qt_random", "l2vit", "inline", "mala"):  # positive: an average of v
        assert out.float().abs().max() <= 1e3 * 1.01


def test_autocast_keeps_fp32_island():
    q, k, v = (t.float() for t in qkv(d=16, dv=16))
    m = create_kernel("qt", head_dim=16, num_heads=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m(q, k, v))


def test_learnable_parameters_get_gradients():
    q, k, v = (t.float() for t in qkv(d=16, dv=16))
    for name, pname in [("qt", "scale"), ("qt_paper", "alpha"), ("qt_paper", "gamma"), ("focused", "scale"),
                        ("l2vit", "temperature"), ("polaformer", "scale"), ("polaformer", "power")]:
        m = create_kernel(name, head_dim=16, num_heads=3)
        m(q, k, v).square().sum().backward()
        grad = getattr(m, pname).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, (name, pname)


@pytest.mark.parametrize("args, match", [
    ((torch.randn(2, 8, 16), torch.randn(2, 8, 16), torch.randn(2, 8, 16)), "4 dimensions"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 16)), "same head dim"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 8, 16)), "same number of tokens"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)), "batch and head sizes"),
    ((torch.randn(1, 2, 0, 16), torch.randn(1, 2, 0, 16), torch.randn(1, 2, 0, 16)), "empty sequence"),
    ((torch.ones(1, 2, 8, 16, dtype=torch.long),) * 3, "floating-point"),
])
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        attend(*args, kernel="qt")


def test_unknown_kernel_and_options():
    x = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match=r"unknown attention kernel 'relue'; did you mean relu"):
        attend(x, x, x, kernel="relue")
    with pytest.raises(ValueError, match="bad option for kernel 'relu'"):
        attend(x, x, x, kernel="relu", pool=2)
    with pytest.raises(ValueError, match="divisible by pool"):
        attend(x, x, x, kernel="qt_pool", pool=3)
    with pytest.raises(ValueError, match="head_dim=16"):
        create_kernel("qt", head_dim=16)(x, x, x)
    with pytest.raises(ValueError, match="built for 3 heads"):
        create_kernel("l2vit", head_dim=8, num_heads=3)(x, x, x)


TOKEN_DEPENDENT = ("cosine", "mean", "sigmoid_softmax", "l2vit", "focused", "polaformer", "inline", "mala", "rala",
                   "aft_simple", "hydra")  # their similarity has a 1/N, a softmax over keys, or no feature map


@pytest.mark.parametrize("name", [k for k in LINEAR if k not in TOKEN_DEPENDENT])
def test_full_feature_map_has_feature_dim_and_gives_the_similarity(name):
    m = kernel(name)
    q, k, _ = qkv()
    fq, fk = m.features(q), m.features(k)
    assert fq.shape[-1] == m.feature_dim
    torch.testing.assert_close(fq @ fk.transpose(-1, -2), m.similarity(q, k), rtol=1e-10, atol=1e-12)


def test_mixed_dtypes_are_promoted():
    """Under autocast a bf16 k plus an fp32 positional embedding is fp32: promote, as torch ops do."""
    q, k, v = (t.float() for t in qkv(d=16, dv=16))
    m = create_kernel("qt", head_dim=16, num_heads=3)
    out = m(q.bfloat16(), k, v.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m(q.bfloat16().float(), k, v.bfloat16().float()))


NORMALISING = ["qt", "angular", "cosine", "hydra"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NORMALISING)
def test_zero_tokens_give_finite_gradients(name, dtype):
    """Issue 9.3: sqrt(Σx²) has an infinite slope at 0, so an all-zero query or key token gave NaN gradients."""
    q, k, v = (t.to(dtype) for t in qkv(b=1, h=2, n=6, d=8, dv=8))
    q[:, :, 0] = 0
    k[:, :, 1] = 0
    q.requires_grad_(True)
    k.requires_grad_(True)
    m = create_kernel(name, head_dim=8, num_heads=2).to(dtype)
    out = m(q, k, v)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    for t in (q, k, *m.parameters()):
        assert torch.isfinite(t.grad).all(), name
    # a zero token does not change the others: its features are 0 (qt: the constant only)
    q2 = q.detach().clone()
    q2[:, :, 0] = 1e-30  # below the norm's floor in fp32 / far from it in fp64, still no NaN
    assert torch.isfinite(m(q2, k.detach(), v)).all()


@pytest.mark.parametrize("name", NORMALISING)
def test_zero_tokens_fast_path_matches_reference(name):
    q, k, v = qkv(b=1, h=2, n=6, d=8, dv=8)
    q[:, :, 0] = 0
    k[:, :, 1] = 0
    m = create_kernel(name, head_dim=8, num_heads=2).double()
    torch.testing.assert_close(m(q, k, v), m.explicit(q, k, v), rtol=1e-10, atol=1e-12)


def test_reference_is_written_for_every_kernel():
    from qtvit.attention.reference import SIMILARITIES

    assert set(SIMILARITIES) == set(list_kernels())


def test_kernel_factory_resolves_once_and_records_name_and_options():
    from qtvit.attention import kernel_factory

    f = kernel_factory("qt", scale=2.0)
    assert f.name == "qt" and f.options == {"scale": 2.0} and "qt" in repr(f)
    a, b = f(16, 3), f(8, 2)
    assert a is not b and a.head_dim == 16 and b.num_heads == 2 and a.scale.item() == 2.0
    custom = lambda head_dim, num_heads: create_kernel("relu", head_dim=head_dim, num_heads=num_heads)  # noqa: E731
    assert kernel_factory(custom) is custom
    with pytest.raises(ValueError, match="unknown attention kernel 'qtt'; did you mean qt"):
        kernel_factory("qtt")
    with pytest.raises(ValueError, match="only apply to a kernel given by name"):
        kernel_factory(custom, scale=2.0)
    with pytest.raises(ValueError, match="kernel must be a kernel name"):
        kernel_factory(3)
