"""Inference paths of the model benchmark (every mode equals eager, for any input size) and the side-by-side run
against EfficientViT, the official-code loader and the sgemm floor."""
from __future__ import annotations

import sys

import pytest
import torch

import qtvit
from qtvit.tools.bench import compare, paths
from qtvit.tools.export import calibrate_batchnorm


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 48)


def test_jit_form_is_size_free_and_equals_eager(nano):
    traced = paths.jit_form(nano, torch.randn(1, 3, 32, 32))
    g = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 32, 32), (2, 3, 48, 80), (1, 3, 16, 16)]:  # other batch, larger non-square, smaller
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref, out = nano(x), traced(x)
        assert ref.abs().max() > 0.05
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", [m for m in paths.MODES if m not in ("compile", "cudagraph")])
def test_every_mode_builds_and_runs(nano, mode, tmp_path):
    pytest.importorskip("onnxruntime")
    forms = paths.Forms(nano, tmp_path, threads=1)
    for h, w in [(32, 32), (32, 48)]:
        fn, setup = forms.build(mode, h, w, 1)
        fn()
        assert setup >= 0
    # what holds for every size is built once and shared between sizes
    assert (mode in forms.setup_s) == (mode in ("fused-dynamic", "jit") or mode.startswith("onnxruntime"))
    with pytest.raises(ValueError, match="unknown mode"):
        forms.build("tensorrt", 32, 32, 1)


def test_cudagraph_mode_without_cuda_says_so(nano, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        paths.Forms(nano, tmp_path).build("cudagraph", 32, 32, 1)


def test_onnxruntime_modes_refuse_other_dtypes(nano, tmp_path):
    forms = paths.Forms(nano, tmp_path, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CPU in float32 only"):
        forms.build("onnxruntime", 32, 32, 1)
    fn, _ = forms.build("eager", 32, 32, 1)  # other modes cast a copy: the model itself stays float32
    fn()
    assert next(nano.parameters()).dtype == torch.float32


def test_onnx_session_without_spinning_gives_the_same_logits(nano, tmp_path):
    pytest.importorskip("onnxruntime")
    from qtvit.tools.export import check_onnx, export_onnx, onnx_session

    path = export_onnx(nano, tmp_path / "n.onnx", 32)
    sess = onnx_session(path, 1, spinning=False)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert max(r["max_abs_diff"] for r in check_onnx(nano, path, [32, (48, 32)], session=sess)) <= 1e-4


def _fake_official(root):
    """A stand-in checkout with the official layout; its model file imports the training module that needs
    torchpack, as the real one does (through models/nn/drop.py)."""
    pkg = root / "efficientvit" / "models" / "efficientvit"
    pkg.mkdir(parents=True)
    for d in (root / "efficientvit", root / "efficientvit" / "models", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "cls.py").write_text(
        "import torch.nn as nn\n"
        "from efficientvit.apps.trainer.run_config import Scheduler\n"
        "def efficientvit_cls_b1():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    return root


def test_side_by_side_rows_and_ratios(monkeypatch, tmp_path, nano):
    pytest.importorskip("onnxruntime")
    small = {"qtvit_1": lambda: nano, "efficientvit_b1": lambda: qtvit.create_model("efficientvit_nano",
                                                                                    num_classes=10).eval()}
    monkeypatch.setattr(compare, "build_model", lambda name: small[name]())
    monkeypatch.setattr(compare, "PAUSE_S", 0.0)
    official = _fake_official(tmp_path / "amd")
    try:
        modes = ("fused-dynamic", "onnxruntime", "onnxruntime-nospin")
        rows = compare.side_by_side(["32", "48"], modes=modes, repeats=2,
                                    official=official)
        with pytest.raises(ValueError, match="square inputs only"):
            compare.side_by_side(["32x48"], repeats=1, official=official)
    finally:
        for name in [n for n in sys.modules if n == "efficientvit" or n.startswith("efficientvit.")]:
            del sys.modules[name]
    assert [r["size"] for r in rows] == ["32", "48"]
    for r in rows:
        qt, b1 = r["qtvit_1 onnxruntime ms"], r["efficientvit_b1 onnxruntime ms"]
        assert r["qt_over_b1"] == pytest.approx(qt / b1, rel=1e-2)
        nospin = r["qtvit_1 onnxruntime-nospin ms"] / r["efficientvit_b1 onnxruntime-nospin ms"]
        assert r["qt_over_b1 onnxruntime-nospin"] == pytest.approx(nospin, rel=1e-2)
        fastest = min(r["qtvit_1 fused-dynamic ms"], qt, r["qtvit_1 onnxruntime-nospin ms"])
        assert r[f"qtvit_1 {r['fastest']} ms"] == fastest
        assert r["official_over_fastest"] == pytest.approx(r["official QT-ViT-1 eager ms"] / fastest, rel=1e-2)
        assert r["sgemm_gflops"] > 0 and r["floor_ms"] > 0
        assert r["fastest_over_floor"] == pytest.approx(fastest / r["floor_ms"], rel=1e-2)
        text = compare.format_row(r)
        assert "qtvit_1/b1 (onnxruntime)" in text and "qtvit_1/b1 (onnxruntime-nospin)" in text
        assert "official/fastest" in text and "fastest/floor" in text


def test_side_by_side_needs_an_onnxruntime_mode_and_a_real_checkout(tmp_path):
    with pytest.raises(ValueError, match="include onnxruntime"):
        compare.side_by_side(["32"], modes=("fused-dynamic",))
    with pytest.raises(FileNotFoundError, match="AMD_QTViT"):
        paths.load_official_qtvit(tmp_path)


def test_fastest_is_chosen_among_fp32_paths_and_the_floor_is_two_flops_per_mac():
    med = {"efficientvit_b1 onnxruntime": 0.2, "qtvit_1 fused-dynamic": 0.3, "qtvit_1 onnxruntime": 0.22,
           "qtvit_1 onnxruntime-int8": 0.1, "official QT-ViT-1 eager": 0.66}
    r = compare._row(1024, 1024, med, ("fused-dynamic", "onnxruntime", "onnxruntime-int8"), "onnxruntime",
                     rate=100.0, macs=1e9, load=0.5, repeats=3)
    assert r["fastest"] == "onnxruntime"  # int8 is faster but the goals are fp32
    assert r["qt_over_b1"] == pytest.approx(1.1) and r["official_over_fastest"] == pytest.approx(3.0)
    assert r["floor_ms"] == pytest.approx(20.0) and r["fastest_over_floor"] == pytest.approx(11.0)
    assert "MISSED >= 3.0" not in compare.format_row(r) and "met <= 1.10" in compare.format_row(r)


def test_benchmark_weights_give_activations_of_trained_scale():
    # at init the logits are ~1e-14 and the attention products denormal (10-100x slower on CPU)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        fresh = paths.create_model("efficientvit_b0").eval()(x).abs().max().item()
        bench = paths.build_model("efficientvit_b0")(x).abs().max().item()
    assert fresh < 1e-6 and bench > 1e-2
    assert not paths.build_model("efficientvit_b0").training
