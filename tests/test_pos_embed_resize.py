"""The QT-ViT positional-embedding resize as two interpolation matrices: equal to torch's bicubic F.interpolate
(float64, up- and downsizing, non-square, border clamping) and exported without a dynamic ONNX Resize of the
embedding (only of the small identity that gives the matrices)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qtvit
from qtvit.layers.resize import interpolation_matrix, resize_embedding, separable_resize

SOURCES = [(14, 14), (7, 7), (7, 9), (1, 1), (2, 3), (16, 5)]
TARGETS = [1, 2, 3, 5, 7, 8, 13, 14, 15, 28, 33, 64, 97]


@pytest.mark.parametrize("src", SOURCES)
def test_matrices_equal_torch_bicubic_in_float64(src):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *src, generator=g, dtype=torch.float64)
    for h in TARGETS:
        for w in (1, 4, 14, 21, 64):
            ref = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
            out = separable_resize(x, h, w)
            assert out.shape == ref.shape
            rel = (out - ref).abs().max() / ref.abs().max().clamp_min(1e-300)
            assert rel < 1e-12, (src, h, w, float(rel))


def test_matrix_rows_sum_to_one_and_same_size_is_identity():
    for n_out, n_in in [(5, 14), (14, 14), (64, 14), (3, 1)]:
        m = interpolation_matrix(n_out, n_in, dtype=torch.float64)
        assert m.shape == (n_out, n_in)
        torch.testing.assert_close(m.sum(1), torch.ones(n_out, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(interpolation_matrix(14, 14, dtype=torch.float64), torch.eye(14, dtype=torch.float64),
                               rtol=0, atol=0)


def test_float32_close_to_torch():
    x = torch.randn(1, 256, 14, 14, generator=torch.Generator().manual_seed(1))
    for h, w in [(64, 64), (20, 30), (7, 7)]:
        ref = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        torch.testing.assert_close(separable_resize(x, h, w), ref, rtol=0, atol=2e-5)


def test_lite_mla_pos_embed_tokens_match_interpolate_and_keep_gradients():
    torch.manual_seed(0)
    model = qtvit.create_model("qtvit_nano", num_classes=10).double()
    mla = next(m for m in model.modules() if getattr(m, "pos_embed", None) is not None)
    with torch.no_grad():
        mla.pos_embed.normal_()
    E, d = mla.num_heads, mla.head_dim
    for h, w in [(3, 5), (9, 9), (2, 2)]:
        ref = F.interpolate(mla.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        ref = ref.reshape(1, E, d, h * w).transpose(-1, -2)
        out = mla.pos_embed_tokens(h, w)
        assert out.grad_fn is not None  # trainable through the matrices
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_exported_graph_resizes_only_the_identity(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from qtvit.tools.export import calibrate_batchnorm, check_onnx, export_onnx

    torch.manual_seed(0)
    model = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 48)
    path = export_onnx(model, tmp_path / "nano.onnx", 32)
    graph = onnx.load(str(path)).graph
    made_by = {out: n for n in graph.node for out in n.output}

    def source(name: str) -> str:  # the op a tensor comes from, through shape-only ops
        node = made_by.get(name)
        while node is not None and node.op_type in ("Unsqueeze", "Reshape", "Cast", "Identity"):
            node = made_by.get(node.input[0])
        return "initializer" if node is None else node.op_type

    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes and {source(n.input[0]) for n in resizes} <= {"EyeLike", "Constant"}  # never the embedding
    assert "MatMul" in {n.op_type for n in graph.node}
    # one dynamic graph: down- (16 px: 1x1 map), up- (96 px) and non-square sizes
    rows = check_onnx(model, path, [(32, 32), (16, 16), (96, 96), (32, 80)], batch_size=2, atol=1e-4)
    assert max(r["max_abs_diff"] for r in rows) <= 1e-4
    assert min(r["max_abs_output"] for r in rows) > 0.05


def test_resize_embedding_skips_the_stored_size_also_in_a_trace():
    """resize_embedding is pe itself at its stored size and the bicubic resize at any other; traced at the stored
    size, the test stays in the graph (a scripted If), so the trace still resizes at other sizes."""
    pe = torch.randn(1, 6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def mats(h, w):
        return (interpolation_matrix(h, 7, dtype=torch.float64),
                interpolation_matrix(w, 7, dtype=torch.float64, transposed=True))

    torch.testing.assert_close(mats(5, 9)[1], interpolation_matrix(9, 7, dtype=torch.float64).T, rtol=0, atol=0)
    assert resize_embedding(pe, *mats(7, 7)) is pe
    traced = torch.jit.trace(lambda m, t: resize_embedding(pe, m, t), mats(7, 7), check_trace=False)
    for h, w in [(7, 7), (5, 9), (16, 16)]:
        ref = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
        torch.testing.assert_close(resize_embedding(pe, *mats(h, w)), ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(traced(*mats(h, w)), ref, rtol=0, atol=1e-13)


def test_exported_stage_builds_the_matrices_once_and_skips_the_stored_size(tmp_path):
    """Each attention stage of the exported graph has 2 dynamic Resizes (the matrices, shared by its blocks) and one
    If per block (the resize skipped at the stored size); the graph matches eager at and off that size."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from qtvit.tools.export import calibrate_batchnorm, check_onnx, export_onnx
    from qtvit.layers.lite_mla import LiteMLA

    torch.manual_seed(0)
    model = calibrate_batchnorm(qtvit.create_model("qtvit_pico", num_classes=10), 28)  # blocks: 2 at 7x7, 1 at 4x4
    n_blocks = sum(isinstance(m, LiteMLA) for m in model.modules())
    ops = [n.op_type for n in onnx.load(str(export_onnx(model, tmp_path / "pico.onnx", 28))).graph.node]
    assert (ops.count("If"), ops.count("Resize"), n_blocks) == (3, 4, 3)
    # 28 px: the stored 7x7 and 4x4 maps, where the If skips the resize; 40x24 px: resized
    rows = check_onnx(model, tmp_path / "pico.onnx", [(28, 28), (40, 24)], batch_size=2, atol=1e-4)
    assert max(r["max_abs_diff"] for r in rows) <= 1e-4 and min(r["max_abs_output"] for r in rows) > 0.05


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolation_matrix_is_torch_resize_of_each_axis(mode):
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for h, w in [(24, 5), (3, 11), (7, 40)]:
        ref = F.interpolate(x[None], size=(h, w), mode=mode, align_corners=False)[0]
        torch.testing.assert_close(separable_resize(x, h, w, mode), ref, rtol=0, atol=1e-13)


def test_resize_to_bicubic_equals_interpolate_any_layout_and_dtype():
    """The segmentation heads and metrics resize through resize_to: channels-last or not, float64 exact, half
    precision resized in float32 and cast back, gradients as torch's, the identity at the same size."""
    from qtvit.layers.resize import resize_to
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 6, 9, dtype=torch.float64, generator=g)
    ref = F.interpolate(x, size=(24, 20), mode="bicubic", align_corners=False)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(resize_to(inp, (24, 20), "bicubic"), ref, rtol=0, atol=1e-13)
    half = resize_to(x.to(torch.bfloat16), (24, 20), "bicubic")
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref, rtol=0.02, atol=0.05)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (resize_to(a, (24, 20), "bicubic") * w).sum().backward()
    (F.interpolate(b, size=(24, 20), mode="bicubic", align_corners=False) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    assert resize_to(x, (6, 9), "bicubic") is x


@pytest.mark.parametrize("kernel", ["qt", "relu", "elu"])
@pytest.mark.parametrize("train", [False, True])
def test_traced_lite_mla_is_channel_major_and_equals_eager(kernel, train):
    """A trace (what the ONNX export records) takes LiteMLA's channel-major path (kernel.forward_channels_first,
    the v-shortcut's BN over the channel axis, the embedding resized straight into (1, E, d, N)); in float64 it
    equals the eager token-major path at the traced size and at others, in eval and in training mode
    (tests/test_export.py checks that onnxruntime's graph then has no Transpose)."""
    from qtvit.attention import kernel_factory
    from qtvit.layers.lite_mla import LiteMLA

    torch.manual_seed(0)
    qt = kernel == "qt"
    mla = LiteMLA(32, head_dim=8, kernel_layer=kernel_factory(kernel), pos_embed_size=(6, 6) if qt else None,
                  v_shortcut=qt).double()
    if qt:
        with torch.no_grad():
            mla.pos_embed.normal_()
            mla.v_norm.running_mean.normal_()
            mla.v_norm.running_var.uniform_(0.5, 2)
    mla.train(train)
    x = torch.randn(2, 32, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        traced = torch.jit.trace(mla, x, check_trace=False)
    for shape in [(2, 32, 8, 10), (1, 32, 6, 6), (3, 32, 5, 13)]:
        y = torch.randn(*shape, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(traced(y), mla(y), rtol=1e-10, atol=1e-12)
