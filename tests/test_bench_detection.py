"""Detectors in the model benchmark (``qtvit benchmark models``): a detector's timed path keeps a fixed number of
detections, its backbone+FPN (``NAME.backbone``) runs on the detector's padded batch, the inference form folds the
backbone's BatchNorms, unsupported modes are refused by name, and ``--detection`` fills the options left at their
defaults. A tiny registered Mask R-CNN (qtvit_nano, 64-96 px) stands in for the zoo's."""
from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("torchvision")
from qtvit.models import inference_form, register_model, unregister_model  # noqa: E402
from qtvit.models.detection import BackboneFPN, build_detector  # noqa: E402
from qtvit.tools.bench import detection, paths  # noqa: E402
from qtvit.tools.bench.models import FIELDS, benchmark_models  # noqa: E402
from qtvit.tools.parts import split_part  # noqa: E402

NAME = "maskrcnn_benchtest"
DETECTIONS = 7


def maskrcnn_benchtest(pretrained=False, **kwargs):
    kwargs = dict(dict(min_size=64, max_size=96, fpn_channels=16, box_detections_per_img=DETECTIONS,
                       rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50), **kwargs)
    return build_detector("maskrcnn", "qtvit_nano", num_classes=5,
                          backbone_args=dict(strides=(2,) * 5, pos_embed_size=64), **kwargs)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_model(maskrcnn_benchtest)
    yield
    unregister_model(NAME)


def test_split_part():
    assert split_part("maskrcnn_qtvit_1.backbone:kernel=softmax") == ("maskrcnn_qtvit_1:kernel=softmax", "backbone")
    assert split_part("maskrcnn_qtvit_1.backbone") == ("maskrcnn_qtvit_1", "backbone")
    assert split_part("qtvit_1:kernel=softmax") == ("qtvit_1:kernel=softmax", None)
    assert split_part("qtvit_1.head") == ("qtvit_1.head", None)  # not a part: left to the unknown-model error


def test_the_timed_detector_keeps_a_fixed_number_of_detections():
    model = paths.build_model(NAME)  # random weights score every class ~1/K, under torchvision's 0.05
    assert detection.takes_images(model) and model.roi_heads.score_thresh == 0.0 and model.rpn.nms_thresh == 1.0
    rois = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: rois.append(len(out)))
    with torch.no_grad():
        out = model(detection.example_input(model, 2, 61, 90))
    assert rois == [2 * 50]  # rpn_post_nms_top_n_test proposals per image: the RPN's NMS thins none
    assert [len(o["boxes"]) for o in out] == [DETECTIONS] * 2
    assert out[0]["masks"].shape == (DETECTIONS, 1, 61, 90)
    # a threshold given in the spec wins; a default-threshold detector finds nothing here, which is the point
    given = paths.build_model(f"{NAME}:box_score_thresh=0.5")
    assert given.roi_heads.score_thresh == 0.5
    with torch.no_grad():
        assert len(given(detection.example_input(given, 1, 61, 90))[0]["boxes"]) < DETECTIONS


def test_the_backbone_part_runs_on_the_padded_batch_and_folds_its_batchnorms():
    part = paths.build_model(f"{NAME}.backbone")
    assert isinstance(part, BackboneFPN) and not detection.takes_images(part)
    whole = paths.build_model(NAME)
    x = detection.example_input(part, 2, 61, 90)
    padded = whole.transform([torch.zeros(3, 61, 90)])[0].tensors.shape[-2:]
    assert x.shape == (2, 3, *padded) and padded[0] % 32 == 0 and padded[1] % 32 == 0 and padded != (61, 90)
    fused = inference_form(part, tuple(x.shape[-2:]))
    bns = [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not bns and any(isinstance(m, torch.nn.BatchNorm2d) for m in part.modules())
    with torch.no_grad():
        ref, out = part(x), fused(x)
    assert list(ref) == list(out) == ["0", "1", "2", "3", "pool"]
    assert max(r.abs().max() for r in ref.values()) > 0.05  # benchmark weights: activations of a trained scale
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)
    # the whole detector's inference form fuses its backbone for every size (it sees the padded batch)
    fused_det = inference_form(whole, (61, 90))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused_det.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in whole.backbone.modules())  # the original is kept
    with torch.no_grad():
        torch.testing.assert_close(fused_det.backbone(x)["0"], whole.backbone(x)["0"], rtol=1e-4, atol=1e-4)
        out = fused_det(detection.example_input(whole, 1, 61, 90))
    assert len(out[0]["boxes"]) == DETECTIONS


def test_benchmark_rows_of_a_detector_and_its_backbone(tmp_path):
    rows = benchmark_models([NAME, f"{NAME}.backbone", f"{NAME}.backbone:kernel=softmax"], ["61x90"],
                            batch_sizes=[1], modes=["eager", "fused", "onnxruntime"], repeats=2, max_call_s=60)
    assert all(list(r) == FIELDS for r in rows) and len(rows) == 9
    by = {(r["model"], r["mode"]): r for r in rows}
    for spec in (NAME, f"{NAME}.backbone", f"{NAME}.backbone:kernel=softmax"):
        for mode in ("eager", "fused"):
            r = by[(spec, mode)]
            assert r["time_ms"] > 0 and r["runs"] == 2 and r["gmacs"] > 0 and (r["height"], r["width"]) == (61, 90)
    # the heads and the pasted masks cost more than the backbone+FPN; the part has fewer parameters
    assert by[(NAME, "eager")]["gmacs"] > by[(f"{NAME}.backbone", "eager")]["gmacs"]
    assert by[(NAME, "eager")]["params_m"] > by[(f"{NAME}.backbone", "eager")]["params_m"]
    assert "proposals" in by[(NAME, "eager")]["note"] and "detections per image" in by[(NAME, "eager")]["note"]
    assert "padded batch" in by[(f"{NAME}.backbone", "fused")]["note"]
    # a whole detector does not export; its backbone+FPN does (one ONNX output per level)
    assert by[(NAME, "onnxruntime")]["time_ms"] == "" and "NAME.backbone" in by[(NAME, "onnxruntime")]["note"]
    if by[(f"{NAME}.backbone", "onnxruntime")]["note"].startswith("failed: ImportError"):
        pytest.skip("onnxruntime not installed")
    assert by[(f"{NAME}.backbone", "onnxruntime")]["time_ms"] > 0


def test_a_part_of_a_model_without_one_is_named():
    with pytest.raises(ValueError, match=r"qtvit_nano.backbone.*no .backbone"):
        paths.build_model("qtvit_nano.backbone")


def _parsed(*argv: str) -> argparse.Namespace:
    from qtvit.tools.bench.models import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["models", *argv])


def test_the_detection_preset_fills_what_is_not_given():
    args = _parsed("--detection")
    detection.apply_preset(args, torch.device("cpu"))
    assert args.models == detection.PRESET["models"] and args.sizes == ["800x1333"] and args.batch_sizes == [1]
    assert args.modes == ["eager", "fused"] and args.max_call >= 60 and str(args.out).endswith(
        "bench_detectors_cpu.csv")
    assert {split_part(m)[0] for m in args.models} == set(detection.DETECTION_MODELS)
    args = _parsed("--detection", "--sizes", "480x640", "--models", f"{NAME}.backbone", "--out", "x.csv")
    detection.apply_preset(args, torch.device("cpu"))
    assert args.sizes == ["480x640"] and args.models == [f"{NAME}.backbone"] and str(args.out) == "x.csv"
    args = _parsed()
    detection.apply_preset(args, torch.device("cpu"))  # without --detection nothing changes
    assert args.sizes == _parsed().sizes and args.max_call == 4.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_detectors_on_cuda_in_reduced_precision():
    rows = benchmark_models([NAME, f"{NAME}.backbone"], ["61x90"], batch_sizes=[2], modes=["eager", "fused",
                            "cudagraph"], repeats=2, max_call_s=60, device="cuda", dtype=torch.bfloat16)
    by = {(r["model"], r["mode"]): r for r in rows}
    for key in [(NAME, "eager"), (NAME, "fused"), (f"{NAME}.backbone", "eager"), (f"{NAME}.backbone", "fused"),
                (f"{NAME}.backbone", "cudagraph")]:
        assert by[key]["time_ms"] > 0 and by[key]["device"] == "cuda" and by[key]["peak_mib"] != "", by[key]
    assert "NAME.backbone" in by[(NAME, "cudagraph")]["note"]  # refused by name, not a capture error
