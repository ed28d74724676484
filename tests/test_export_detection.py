"""ONNX export of a detector's backbone+FPN (``qtvit export NAME.backbone``): free batch, height and width, one
output per pyramid level, equal to PyTorch in onnxruntime at sizes that are not multiples of 32, with QT-ViT's
positional embedding resized inside the graph (not frozen at the traced size)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from qtvit.cli import main  # noqa: E402
from qtvit.models import inference_form, register_model, unregister_model  # noqa: E402
from qtvit.models.detection import BackboneFPN, build_detector  # noqa: E402
from qtvit.tools.export import calibrate_batchnorm, check_onnx, export_onnx, onnx_session  # noqa: E402

LEVELS = ["features_0", "features_1", "features_2", "features_3", "features_pool"]
ODD = [(61, 90), (100, 45)]  # non-square, not multiples of 32 (the detector pads to 32; the graph need not)


def _backbone() -> BackboneFPN:
    torch.manual_seed(0)
    # qtvit_nano with the B-series strides 4-32, embeddings stored for 64 px (2x2 at stride 32): random embeddings
    # of std 1 (calibrate_batchnorm), so a resize frozen at the traced size would show in every output
    bb = BackboneFPN("qtvit_nano", 4, 16, backbone_args=dict(strides=(2,) * 5, pos_embed_size=64))
    return calibrate_batchnorm(bb, 64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    bb = _backbone()
    path = export_onnx(bb, tmp_path_factory.mktemp("onnx") / "bb.onnx", (64, 96))
    return bb, path


def test_one_output_per_level_with_free_sizes(exported):
    bb, path = exported
    sess = onnx_session(path, threads=1)
    assert [o.name for o in sess.get_outputs()] == LEVELS
    assert [d if isinstance(d, str) else None for d in sess.get_inputs()[0].shape] == ["batch", None, "height",
                                                                                         "width"]
    assert all(isinstance(o.shape[0], str) and isinstance(o.shape[2], str) and isinstance(o.shape[3], str)
               for o in sess.get_outputs())


def test_onnxruntime_equals_pytorch_at_odd_sizes_and_the_stored_one(exported):
    bb, path = exported
    rows = check_onnx(bb, path, ODD + [(64, 64)], batch_size=2, rtol=1e-5)
    assert all(r["max_abs_output"] > 0.05 for r in rows)  # calibrated: outputs of a trained scale
    # the maps come back at each level's own size: stride 4 of 61x90 is 16x23 (ceil), the pooled level 1x2
    x = torch.randn(1, 3, *ODD[0])
    outs = onnx_session(path, threads=1).run(None, {"input": x.numpy()})
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 23), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_the_positional_embedding_is_resized_in_the_graph(exported):
    """The check above is only meaningful if the embeddings move the outputs at those sizes."""
    bb, path = exported
    x = torch.randn(1, 3, *ODD[1])
    plain = _backbone()
    for m in plain.modules():
        if getattr(m, "pos_embed", None) is not None:
            m.pos_embed.data.zero_()
    with torch.no_grad():
        with_pe, without = list(bb(x).values()), list(plain(x).values())
    # the embedding (added to the keys) moves the maps by 10x more than the check's tolerance allows
    assert max(float((a - b).abs().max()) for a, b in zip(with_pe, without)) > 1e-3
    outs = onnx_session(path, threads=1).run(None, {"input": x.numpy()})
    for out, ref in zip(outs, with_pe):
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-4)


def test_the_fused_backbone_exports_for_every_size(tmp_path):
    bb = _backbone()
    fused = inference_form(bb)  # BatchNorms folded; embeddings resized per call
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    path = export_onnx(fused, tmp_path / "fused.onnx", (64, 96))
    check_onnx(bb, path, ODD, batch_size=1, rtol=1e-5)  # against the eager model


def maskrcnn_exporttest(pretrained=False, **kwargs):
    return build_detector("maskrcnn", "qtvit_nano", num_classes=5, fpn_channels=16, min_size=64, max_size=96,
                          backbone_args=dict(strides=(2,) * 5, pos_embed_size=64), **kwargs)


@pytest.fixture
def registered():
    register_model(maskrcnn_exporttest)
    yield "maskrcnn_exporttest"
    unregister_model("maskrcnn_exporttest")


def test_cli_exports_a_detectors_backbone(registered, tmp_path, capsys):
    assert main(["export", f"{registered}.backbone", "--img-size", "64", "96", "--output", str(tmp_path),
                 "--check"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / f"{registered}.backbone.onnx"
    assert path.is_file() and "dynamic batch/height/width" in text
    assert text.count("check 2x") == 3 and "check 2x61x129:" in text  # 64-8+5 x 96+24+9: not multiples of 32
    assert [o.name for o in onnx_session(path, threads=1).get_outputs()] == LEVELS


@pytest.mark.parametrize("argv, message", [
    (["export", "qtvit_nano.backbone"], "qtvit_nano.backbone: the model has no .backbone"),
    (["export", "maskrcnn_qtvit_9.backbone"], "unknown model 'maskrcnn_qtvit_9'"),
    (["export", "maskrcnn_qtvit_1.backbone", "--quantize", "int8"], "export maskrcnn_qtvit_1.backbone in fp32"),
])
def test_cli_part_errors_are_clear(argv, message, tmp_path, capsys):
    assert main(argv + ["--output", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
