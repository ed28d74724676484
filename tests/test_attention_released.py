"""The kernels that follow an author's released operator, against an independent reimplementation written here from
that code (or, where marked, from the paper's formula), in float64; the symmetric taylor2 map; the speed ratios' API."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from qtvit.attention import attend, create_kernel


def qkv(b=2, h=3, n=36, d=8, dv=8, scale=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, h, n, dv, generator=g, dtype=torch.float64)
    return q, k, v


def tokens(x):
    """(B, H, N, d) -> the released codes' token-major (B, N, C) before the head split."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


def heads(x, h):
    B, N, C = x.shape
    return x.reshape(B, N, h, C // h).transpose(1, 2)


def randomise(m, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


def test_focused_matches_flatten_released_code():
    """FocusedLinearAttention (flatten_pvt.py): norms and the softplus scale over all C = H·d channels."""
    h, d = 4, 8
    q, k, v = qkv(h=h, d=d, dv=d)
    m = randomise(create_kernel("focused", head_dim=d, num_heads=h).double())
    scale = F.softplus(m.scale.detach().reshape(1, 1, h * d))
    qt, kt = (F.relu(tokens(x)) + 1e-6 for x in (q, k))
    qt, kt = qt / scale, kt / scale
    qn, kn = qt.norm(dim=-1, keepdim=True), kt.norm(dim=-1, keepdim=True)
    qt, kt = qt ** 3, kt ** 3
    qt, kt = qt / qt.norm(dim=-1, keepdim=True) * qn, kt / kt.norm(dim=-1, keepdim=True) * kn
    qh, kh = heads(qt, h), heads(kt, h)
    n = k.shape[2]
    z = 1 / (qh @ kh.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    ref = qh @ ((kh.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)) * z
    assert rel_err(m(q, k, v), ref) < 1e-12
    # norms per head (the previous version) give other features: the all-heads norms are not a no-op
    per_head = (F.relu(q) + 1e-6) / F.softplus(m.scale.detach())
    per_head = per_head ** 3 / (per_head ** 3).norm(dim=-1, keepdim=True) * per_head.norm(dim=-1, keepdim=True)
    assert rel_err(per_head, qh) > 1e-3


def test_focused_needs_all_heads():
    x = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="built for 4 heads"):
        create_kernel("focused", head_dim=8, num_heads=4)(x, x, x)


def test_castling_matches_released_code():
    """LinAngularAttention (castling-vit.py), sparse_reg=False, without its dconv branch."""
    q, k, v = qkv()
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    x = 0.5 * v + 1.0 / math.pi * (qn @ (kn.transpose(-2, -1) @ v))
    ref = x / x.norm(dim=-1, keepdim=True)
    m = create_kernel("castling", head_dim=8, num_heads=3)
    assert rel_err(m(q, k, v), ref) < 1e-12
    assert rel_err(m.explicit(q, k, v), ref) < 1e-12
    with pytest.raises(ValueError, match="self-attention"):
        m(q[:, :, :5], k, v)


def test_angular_is_not_castling():
    q, k, v = qkv()
    assert rel_err(attend(q, k, v, kernel="angular"), attend(q, k, v, kernel="castling")) > 0.1


def test_aft_simple_matches_formula():
    """Against the paper's formula, channel by channel (Zhai et al. 2021, AFT-simple)."""
    q, k, v = qkv(n=20)
    ref = torch.empty_like(v)
    for c in range(q.shape[-1]):
        w = torch.softmax(k[..., c], dim=-1)  # over the tokens
        ref[..., c] = torch.sigmoid(q[..., c]) * (w * v[..., c]).sum(-1, keepdim=True)
    m = create_kernel("aft_simple", head_dim=8, num_heads=3)
    m.chunk_size = 6
    assert rel_err(m(q, k, v), ref) < 1e-12
    assert rel_err(m.explicit(q, k, v), ref) < 1e-12
    with pytest.raises(ValueError, match="head dim of q and k"):
        m(q, k, v[..., :5])


def hydra_paper(x_q, x_k, x_v):
    """Hydra attention as the paper's appendix writes it, on token-major (B, N, D) tensors with H = D:
    q, k L2-normalised over their D channels, kv = (k * v).sum(tokens), out = q * kv."""
    q = x_q / x_q.norm(dim=-1, keepdim=True)
    k = x_k / x_k.norm(dim=-1, keepdim=True)
    kv = (k * x_v).sum(dim=-2, keepdim=True)
    return q * kv


@pytest.mark.parametrize("h, d", [(1, 32), (4, 8)])
def test_hydra_is_the_papers_elementwise_operator(h, d):
    """Per head q̂ ⊙ Σ_t (k̂_t ⊙ v_t) (Bolya et al. 2022): one head of D channels is the paper's H = D form; with
    several heads, the paper's operator on each head's channels. Not multi-head cosine attention q̂(k̂ᵀV)."""
    q, k, v = qkv(h=h, d=d, dv=d)
    ref = torch.cat([heads(hydra_paper(*(tokens(x[:, i:i + 1]) for x in (q, k, v))), 1) for i in range(h)], dim=1)
    m = create_kernel("hydra", head_dim=d, num_heads=h)
    assert rel_err(attend(q, k, v, kernel="hydra"), ref) < 1e-10
    assert rel_err(m.explicit(q, k, v), ref) < 1e-10
    m.chunk_size = 7
    assert rel_err(m(q, k, v), ref) < 1e-10
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    multihead_cosine = qn @ (kn.transpose(-2, -1) @ v)  # what ``hydra`` computed before issue 26
    assert rel_err(multihead_cosine, ref) > 1.0
    assert rel_err(attend(q, k, v, kernel="cosine") * k.shape[2], multihead_cosine) < 1e-12  # now: N · cosine
    channel_maps = (qn.unsqueeze(-2) * kn.unsqueeze(-3))  # (B, H, Nq, N, d): the map of each channel
    assert rel_err(torch.einsum("bhijc,bhjc->bhic", channel_maps, v), ref) < 1e-12
    assert rel_err(m.attention_map(q, k), channel_maps.mean(-1)) < 1e-12  # the display: their mean over channels
    with pytest.raises(ValueError, match="head dim of q and k"):
        m(q, k, v[..., :d - 1])
    with pytest.raises(ValueError, match="numerator_map"):
        m(q, k, v, numerator_map=lambda f, sl: f)


@pytest.mark.parametrize("alpha", [4.0, 2.0])
def test_polaformer_matches_released_code(alpha):
    """PolaLinearAttention, torch mode (pola_pvt.py via fla-org's copy), without gate, dwc and positional encoding."""
    h, d = 2, 8
    q, k, v = qkv(h=h, d=d, dv=d)
    m = randomise(create_kernel("polaformer", head_dim=d, num_heads=h, alpha=alpha).double())
    scale = F.softplus(m.scale.detach().reshape(1, 1, h * d))
    power = 1 + alpha * torch.sigmoid(m.power.detach().reshape(1, h, 1, d))
    qh, kh = heads(tokens(q) / scale, h), heads(tokens(k) / scale, h)
    q_pos, q_neg, k_pos, k_neg = (F.relu(x) ** power for x in (qh, -qh, kh, -kh))
    q_sim, q_opp, kk = torch.cat([q_pos, q_neg], -1), torch.cat([q_neg, q_pos], -1), torch.cat([k_pos, k_neg], -1)
    v1, v2 = torch.chunk(v, 2, dim=-1)
    n = k.shape[2]
    outs = []
    for qf, vv in ((q_sim, v1), (q_opp, v2)):
        z = 1 / (qf @ kk.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
        outs.append(qf @ ((kk.transpose(-2, -1) * n ** -0.5) @ (vv * n ** -0.5)) * z)
    ref = torch.cat(outs, dim=-1)
    assert rel_err(m(q, k, v), ref) < 1e-12
    assert rel_err(m.explicit(q, k, v), ref) < 1e-12
    with pytest.raises(ValueError, match="even"):
        m(q, k, v[..., :7])


@pytest.mark.parametrize("kernel_func", ["identity", "relu", "exp"])
def test_inline_matches_released_code(kernel_func):
    """InLineAttention (inline_deit.py / inline_swin.py), without the predicted 3×3 residual."""
    q, k, v = qkv(d=16, dv=16)
    phi = {"identity": lambda x: x, "relu": F.relu, "exp": lambda x: (0.2 * x).exp()}[kernel_func]
    qf, kf = phi(q), phi(k)
    n, s = k.shape[2], 16 ** -0.5
    kv = (kf.transpose(-2, -1) * (s / n) ** 0.5) @ (v * (s / n) ** 0.5)
    ref = qf @ kv + (1 - qf @ kf.mean(dim=2, keepdim=True).transpose(-2, -1) * s) * v.mean(dim=2, keepdim=True)
    m = create_kernel("inline", head_dim=16, num_heads=3, kernel_func=kernel_func)
    assert rel_err(m(q, k, v), ref) < 1e-12
    a = m.attention_map(q, k)
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), rtol=0, atol=1e-12)  # no division needed


def rotate_every_two(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def rope_tables(h, w, d):
    """MALA's released RoPE sin/cos tables for an h×w map and head dim d."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, d // 4, dtype=torch.float64))
    angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
    ih, iw = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    tabs = []
    for fn in (torch.sin, torch.cos):
        th = fn(ih[:, None] * angle[None, :]).unsqueeze(1).repeat(1, w, 1)
        tw = fn(iw[:, None] * angle[None, :]).unsqueeze(0).repeat(h, 1, 1)
        tabs.append(torch.cat([th, tw], -1).flatten(0, 1))
    return tabs


@pytest.mark.parametrize("chunk", [None, 10])
def test_mala_matches_released_code_with_rope(chunk):
    """AddLinearAttention (qhfan/MALA model.py): RoPE on the numerator's φ(q), φ(k) only; no LePE, no gate."""
    d = 8
    q, k, v = qkv(n=36, d=d, dv=d)
    sin, cos = rope_tables(6, 6, d)
    qf, kf = F.elu(q) + 1, F.elu(k) + 1
    s, n = d ** -0.5, k.shape[2]
    z = qf @ kf.mean(dim=-2, keepdim=True).transpose(-2, -1) * s
    qr, kr = (x * cos + rotate_every_two(x) * sin for x in (qf, kf))
    kv = (kr.transpose(-2, -1) * (s / n) ** 0.5) @ (v * (s / n) ** 0.5)
    ref = qr @ kv * (1 + 1 / (z + 1e-6)) - z * v.mean(dim=2, keepdim=True)
    m = create_kernel("mala", head_dim=d, num_heads=3, chunk_size=chunk)
    rope = lambda f, sl: f * cos[sl] + rotate_every_two(f) * sin[sl]  # noqa: E731
    assert rel_err(m(q, k, v, numerator_map=rope), ref) < 1e-12
    assert rel_err(m(q, k, v, numerator_map=lambda f, sl: f), m.explicit(q, k, v)) < 1e-12
    check_rope_option("mala", q, k, v, ref, chunk)


def test_mala_rows_sum_to_one_without_eps():
    q, k, _ = qkv()
    a = create_kernel("mala", head_dim=8, num_heads=3, eps=0.0).attention_map(q, k)
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 10])
def test_rala_matches_released_formulation_with_rope(chunk):
    """GateLinearAttentionNoSilu (qhfan/RALA classfication/RALA.py; fla-org's RALALinearAttention is the same)."""
    d = 8
    q, k, v = qkv(n=36, d=d, dv=d)
    sin, cos = rope_tables(6, 6, d)
    qf, kf = F.elu(q) + 1, F.elu(k) + 1
    n = k.shape[2]
    eff = torch.softmax(d ** -0.5 * qf.mean(dim=-2, keepdim=True) @ kf.transpose(-1, -2), dim=-1).transpose(-1, -2)
    kf = kf * eff * n
    qr, kr = (x * cos + rotate_every_two(x) * sin for x in (qf, kf))
    z = 1 / (qf @ kf.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    ref = qr @ ((kr.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)) * z
    m = create_kernel("rala", head_dim=d, num_heads=3, chunk_size=chunk)
    rope = lambda f, sl: f * cos[sl] + rotate_every_two(f) * sin[sl]  # noqa: E731
    assert rel_err(m(q, k, v, numerator_map=rope), ref) < 1e-12
    check_rope_option("rala", q, k, v, ref, chunk)


def check_rope_option(name, q, k, v, ref, chunk):
    """``rope=True``: the released layer's operator by the fast path, the explicit one and the attention map."""
    d = q.shape[-1]
    m = create_kernel(name, head_dim=d, num_heads=3, chunk_size=chunk, rope=True)
    assert rel_err(m(q, k, v), ref) < 1e-12
    assert rel_err(attend(q, k, v, kernel=name, rope=True, rope_grid=(6, 6)), ref) < 1e-12
    assert rel_err(m.explicit(q, k, v), ref) < 1e-12
    assert rel_err(m.attention_map(q, k) @ v, ref) < 1e-12
    assert rel_err(attend(q, k, v, kernel=name), ref) > 0.05  # without its RoPE, not the released operator


def test_rope_option_says_what_it_needs():
    q, k, v = qkv(n=36, d=8, dv=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        create_kernel("mala", head_dim=6, rope=True)
    with pytest.raises(ValueError, match="rope=True"):
        create_kernel("rala", head_dim=8, rope_grid=(6, 6))
    with pytest.raises(ValueError, match="rope_grid"):
        attend(q[:, :, :35], k[:, :, :35], v[:, :, :35], kernel="mala", rope=True)  # 35 tokens: no square grid
    with pytest.raises(ValueError, match="self-attention"):
        attend(q[:, :, :9], k, v, kernel="rala", rope=True)
    with pytest.raises(ValueError, match="no other"):
        create_kernel("mala", head_dim=8, num_heads=3, rope=True)(q, k, v, numerator_map=lambda f, sl: f)
    assert rel_err(attend(q[:, :, :30], k[:, :, :30], v[:, :, :30], kernel="mala", rope=True, rope_grid=(5, 6)),
                   attend(q[:, :, :30], k[:, :, :30], v[:, :, :30], kernel="mala")) > 0.01


def test_qt_reference_is_written_from_the_formula():
    """The reference is cos(q², k²) + s², not the four-step map: the two agree to the official eps."""
    q, k, _ = qkv(d=16)
    m = create_kernel("qt", head_dim=16, scale=0.6).double()
    sim = m.features(q) @ m.features(k).transpose(-1, -2)
    assert rel_err(sim, m.similarity(q, k)) < 1e-13


@pytest.mark.parametrize("d", [1, 4, 16])
def test_taylor2_symmetric_map_equals_kronecker_map(d):
    """The symmetric map (1 + d + d(d+1)/2 features) gives the Kronecker map's (QT-ViT Eq. 8) inner products."""
    from qtvit.attention import kronecker_square

    q, k, _ = qkv(b=1, h=1, n=30, d=d)

    def kron(x):
        return torch.cat([kronecker_square(F.pad(x / d ** 0.25, (0, 1), value=1.0)),
                          torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1) / math.sqrt(2)

    m = create_kernel("taylor2", head_dim=d).double()
    assert m.feature_dim == 1 + d + d * (d + 1) // 2
    torch.testing.assert_close(m.features(q) @ m.features(k).transpose(-1, -2), kron(q) @ kron(k).transpose(-1, -2),
                               rtol=1e-12, atol=1e-12)


def test_numerator_map_identity_changes_nothing():
    q, k, v = qkv()
    for name in ("relu", "qt", "mala", "rala", "inline"):
        m = create_kernel(name, head_dim=8, num_heads=3)
        assert rel_err(m(q, k, v, numerator_map=lambda f, sl: f), m(q, k, v)) < 1e-14, name


def test_speed_ratio_baselines_compute_their_formulas():
    """The benchmark's floor and peer path are the formulas they claim (the peer only where it is installed)."""
    from qtvit.tools.bench.kernels import peer_taylor_core, relu_minimal

    q, k, v = qkv(d=16, dv=16)
    assert rel_err(relu_minimal(q, k, v), attend(q, k, v, kernel="relu")) < 1e-12
    for symmetric in (False, True):
        peer = peer_taylor_core(16, symmetric=symmetric)
        if peer is not None:
            assert rel_err(peer(q, k, v), attend(q, k, v, kernel="taylor2")) < 1e-10


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile needs a C++ compiler")
def test_compiled_qt_equals_eager_and_the_compiled_ratio_is_measured():
    from qtvit.tools.bench.kernels import speed_ratios

    q, k, v = (t.float() for t in qkv(n=64, d=16, dv=16))
    m = create_kernel("qt", head_dim=16, num_heads=3, scale=0.7)
    with torch.no_grad():
        assert rel_err(torch.compile(m, dynamic=False)(q, k, v), m(q, k, v)) < 1e-5
    rows = speed_ratios("cpu", repeats=1, heads=2, taylor_n=32, qt_n=32, compiled=True)
    row = next(r for r in rows if r["ratio"] == "qt_vs_relu_minimal_compiled")
    assert row["kernel"] == "qt (compiled)" and row["baseline"] == "relu_minimal (compiled)" and row["value"] > 0
    core = next(r for r in rows if r["ratio"] == "qt_core_vs_relu_minimal")  # the torch-ops path, for comparison
    assert core["kernel"].startswith("qt (torch ops") and core["value"] > 0
