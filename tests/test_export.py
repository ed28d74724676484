"""ONNX export: dynamic batch/H/W graphs of a B-type (QT), an L-type (QT) and an L2ViT model match PyTorch."""
from __future__ import annotations

import pytest
import torch

import qtvit
from qtvit.cli import main
from qtvit.tools.export import calibrate_batchnorm, check_onnx, export_onnx, inference_form, onnx_session

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZES = [(64, 64), (64, 96)]  # one square, one not


def _small_l(**kw):
    # QT-ViT-4's L-type layout at small widths; pos_embed_size=64 makes the stored positional embedding (2x2) match a
    # 64 px input exactly, which exercises the exporter's trace-size bump (see qtvit.tools.export).
    return qtvit.create_model("qtvit_4", widths=(8, 16, 32, 64, 128), depths=(1, 1, 1, 1, 1), head_widths=(64, 64),
                              pos_embed_size=64, num_classes=10, **kw)


MODELS = {
    "qtvit_nano": lambda: qtvit.create_model("qtvit_nano", num_classes=10),
    "qtvit_4_small": _small_l,
    "l2vit_tiny": lambda: qtvit.create_model("l2vit_tiny", num_classes=10),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_matches_torch_at_two_sizes_and_batches(name, tmp_path):
    torch.manual_seed(0)
    sizes = [(32, 32), (32, 48)] if name == "qtvit_nano" else SIZES  # nano keeps full resolution to stride 4
    model = calibrate_batchnorm(MODELS[name](), sizes[1])  # O(1) logits and a random positional embedding
    path = export_onnx(model, tmp_path / f"{name}.onnx", sizes[0], dynamic=True)
    sess = onnx_session(path)
    shape = sess.get_inputs()[0].shape
    assert isinstance(shape[0], str) and isinstance(shape[2], str) and isinstance(shape[3], str), shape
    rows = check_onnx(model, path, sizes, batch_size=2, atol=1e-4, session=sess)  # traced at batch 1
    assert [r["size"] for r in rows] == sizes
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)
    assert all(r["max_abs_output"] > 0.05 for r in rows)  # the comparison is not between two ~0 outputs


@pytest.mark.parametrize("name", ["qtvit_nano", "efficientvit_nano"])
def test_onnxruntime_runs_the_attention_without_transposes(name, tmp_path):
    """The exported LiteMLA stays channel-major (kernel.forward_channels_first): after onnxruntime's own graph
    optimisations no Transpose is left anywhere in qtvit's (qt) or EfficientViT's (relu) graph."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    path = export_onnx(calibrate_batchnorm(qtvit.create_model(name, num_classes=10), 32), tmp_path / "m.onnx", 32)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable, no NCHWc layouts
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Transpose" not in ops and ops.count("Conv") > 10


def test_inference_form_exports_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = calibrate_batchnorm(_small_l(), (64, 96))  # non-trivial BN statistics, so folding them is tested
    fused = inference_form(model, None)
    path = export_onnx(fused, tmp_path / "fused.onnx", (64, 96))
    rows = check_onnx(model, path, SIZES, batch_size=2)  # compared with the eager model
    assert max(r["max_abs_diff"] for r in rows) <= 1e-4
    assert min(r["max_abs_output"] for r in rows) > 0.05


def test_size_fused_model_needs_static_export(tmp_path):
    model = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 32)
    fused = inference_form(model, (32, 32))
    with pytest.raises(ValueError, match="dynamic=False"):
        export_onnx(fused, tmp_path / "x.onnx", 32, dynamic=True)
    path = export_onnx(fused, tmp_path / "static.onnx", 32, dynamic=False)
    row = check_onnx(model, path, [32], batch_size=1)[0]
    assert row["max_abs_diff"] <= 1e-4 and row["max_abs_output"] > 0.05
    sess = onnx_session(path)
    assert sess.get_inputs()[0].shape == [1, 3, 32, 32]


def test_bad_arguments(tmp_path):
    model = qtvit.create_model("qtvit_nano", num_classes=10)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", 32, opset=10)
    with pytest.raises(ValueError, match="bad image size"):
        export_onnx(model, tmp_path / "x.onnx", (32, 32, 3))
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(model, tmp_path, 32)
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        onnx_session(tmp_path / "missing.onnx")


def test_cli_exports_and_checks(tmp_path, capsys):
    out = tmp_path / "nano.onnx"
    assert main(["export", "qtvit_nano", "--format", "onnx", "--num-classes", "10", "--img-size", "32", "48",
                 "--output", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "dynamic" in text
    assert text.count("check 2x") == 3  # the trace size and two non-square ones
    assert "check 2x33x69:" in text  # one not a multiple of 32 (nor of 8)


@pytest.mark.parametrize("argv, message", [
    (["export", "qtvit_9", "--format", "onnx"], "unknown model 'qtvit_9'"),
    (["export", "qtvit_nano", "--format", "tflite"], "unknown format 'tflite'"),
    (["export", "qtvit_nano", "--checkpoint", "/nonexistent/w.pth"], "does not exist"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_calibrated_model_has_order_one_logits_and_a_visible_pos_embed():
    model = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 32)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        y = model(x)
        for m in model.modules():
            if getattr(m, "pos_embed", None) is not None:
                m.pos_embed.zero_()
        y0 = model(x)
    assert 0.05 < float(y.abs().max()) < 1e3
    assert float((y - y0).abs().max()) > 2e-4  # the embedding moves the logits by more than the check's atol


def test_cli_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "nano.onnx"
    out.write_bytes(b"keep me")
    argv = ["export", "qtvit_nano", "--num-classes", "10", "--img-size", "32", "--output", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and out.read_bytes() == b"keep me"
    assert main(argv + ["--overwrite"]) == 0
    assert out.read_bytes() != b"keep me" and onnx_session(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nano.onnx"]  # written atomically: no temporary left


def test_cli_output_folder_gets_model_named_file(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["export", "qtvit_nano", "--num-classes", "10", "--img-size", "32", "--output", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["qtvit_nano.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]  # no <dir>.tmp beside it


def test_cli_checkpoint_loads_through_create_model(tmp_path):
    src = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 32)
    torch.save({"model": src.state_dict()}, tmp_path / "trained.pth")
    out = tmp_path / "trained.onnx"
    assert main(["export", "qtvit_nano", "--num-classes", "10", "--img-size", "32", "--checkpoint",
                 str(tmp_path / "trained.pth"), "--output", str(out)]) == 0
    row = check_onnx(src, out, [32], batch_size=2)[0]  # the graph holds the checkpoint's weights
    assert row["max_abs_diff"] <= 1e-4 and row["max_abs_output"] > 0.05


def test_export_is_reexported_from_the_models():
    from qtvit.models.inference import inference_form as models_inference_form

    assert inference_form is models_inference_form


def test_int8_quantization_keeps_dynamic_shapes_and_attention_in_float(tmp_path):
    onnx = pytest.importorskip("onnx")
    from qtvit.tools.export import onnx_top1, quantize_onnx

    torch.manual_seed(0)
    model = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), 32)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", 32)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(4)]
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", calib)
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") > 10  # every conv in INT8, its bias too
    quantized = {o for n in graph.node if n.op_type in ("QLinearConv", "QuantizeLinear") for o in n.output}
    # the attention (its matrix products, the QT kernel's norms: Mul + ReduceSum + Sqrt) reads float tensors
    attention = [n for n in graph.node if n.op_type in ("MatMul", "ReduceSum", "Sqrt")]
    assert len(attention) > 5 and not any(i in quantized for n in attention for i in n.input)
    shape = onnx_session(int8).get_inputs()[0].shape
    assert isinstance(shape[0], str) and isinstance(shape[2], str) and isinstance(shape[3], str)
    # top-1 against the fp32 model's own predictions: fp32 agrees with itself, int8 with most of them
    x = torch.randn(64, 3, 48, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = onnx_top1({"fp32": onnx_session(fp32), "int8": onnx_session(int8)}, [(x[:32], y[:32]), (x[32:], y[32:])])
    assert res["fp32"][:2] == (100.0, 64) and res["int8"][1] == 64
    assert 50.0 <= res["int8"][0] <= 100.0 and res["int8"][2] > 0


def test_onnx_top1_needs_images():
    from qtvit.tools.export import onnx_top1

    with pytest.raises(ValueError, match="no evaluation images"):
        onnx_top1({"fp32": None}, [])


def test_cli_quantize_int8_with_evaluation(tmp_path, capsys):
    pytest.importorskip("onnx")
    import numpy as np

    from qtvit.data.fashion_mnist import write_idx

    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for split in ("train", "t10k"):
        write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, 12, dtype=np.uint8))
    out = tmp_path / "q.onnx"
    assert main(["export", "qtvit_pico", "--num-classes", "10", "--img-size", "28", "--output", str(out),
                 "--quantize", "int8", "--calibration-data", str(data), "--calibration-images", "8",
                 "--evaluate"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "q.fp32.onnx").exists()  # the fp32 intermediate is removed
    assert "int8" in text and "top-1 on 12 evaluation images: fp32" in text and "speed-up" in text
