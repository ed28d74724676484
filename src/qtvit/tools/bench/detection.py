"""Detectors in the model benchmark: torchvision's Mask R-CNN / RetinaNet of ``qtvit.models.detection`` and their
backbone+FPN alone, through the same modes, rows and CSV as the classifiers.

    qtvit benchmark models --detection       # Mask R-CNN on efficientvit_b1, qtvit_1, qtvit_1:kernel=softmax at
                                             # 800x1333, whole and backbone+FPN, eager and fused, median of 5
    qtvit benchmark models --models maskrcnn_qtvit_1 maskrcnn_qtvit_1.backbone:kernel=softmax --sizes 800x1333 \\
        --batch-sizes 1 --modes eager fused --max-call 600

What is timed, at a size HxW:

- a detector (``maskrcnn_qtvit_1``): ``model(images)`` on a list of ``batch`` random (3, H, W) images in 0..1, as
  torchvision's detectors take them: its transform (resize to ``min_size`` 800 / ``max_size`` 1333, ImageNet
  normalisation, padding to a multiple of 32), the backbone+FPN, the RPN (its NMS, then the top 1000 proposals), the
  box head on them, the per-class NMS, the mask head on the detections, and the masks pasted into the image. Random
  weights make that path depend on the backbone: their near-constant RPN outputs decode to anchor-like boxes that
  the RPN's NMS (IoU 0.7) thins to a few dozen proposals (measured 27 for efficientvit_b1, 1000 for qtvit_1 at
  800x1333; its random box deltas, which scale with the features, also push boxes off the image, where they are
  dropped), and they score every class near 1/K, under torchvision's 0.05 threshold (no detection for the mask
  head). So the benchmark zeroes the RPN's box deltas (the proposals are the anchors), sets its NMS threshold to 1
  (every box is kept: ``rpn_post_nms_top_n_test`` = 1000 proposals per image) and the score threshold to 0
  (``box_score_thresh``; RetinaNet's ``score_thresh``), so that every image keeps ``box_detections_per_img`` = 100
  detections, COCO's evaluation cap: the heads' cost at their fullest (a trained model's at most), the same for
  every backbone and run (tested). A threshold given in the spec wins;
- its backbone+FPN (``maskrcnn_qtvit_1.backbone``, the detector's ``backbone``): a (batch, 3, H', W') tensor,
  (H', W') the detector's padded batch for an HxW image (800x1344 for 800x1333): where the attention kernels'
  difference shows, undiluted by the heads.

Modes: detectors run ``eager``, ``fused`` and ``fused-dynamic`` (``inference_form``: the backbone's BatchNorms
folded, for every size, since the backbone's input is the padded batch); the backbone+FPN runs in every mode (its
ONNX graph is ``qtvit export NAME.backbone``). FLOPs are torch's flop counter's (convolutions and matrix products;
RoIAlign and NMS are not counted).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..parts import model_part, split_part

__all__ = ["DETECTION_MODELS", "DETECTION_SIZES", "DETECTOR_MODES", "split_part", "takes_images", "build_target",
           "example_input", "add_arguments", "apply_preset"]

DETECTION_MODELS = ["maskrcnn_efficientvit_b1", "maskrcnn_qtvit_1", "maskrcnn_qtvit_1:kernel=softmax"]
DETECTION_SIZES = ["800x1333"]  # COCO's test size (torchvision's min_size=800, max_size=1333)
DETECTOR_MODES = ("eager", "fused", "fused-dynamic")
# --detection's settings, where the command line does not give them: a detector call takes 5-20 s on 2 cores, which
# the classifiers' 4 s guard would cut to one run
PRESET = dict(models=DETECTION_MODELS + ["maskrcnn_efficientvit_b1.backbone", "maskrcnn_qtvit_1.backbone",
                                         "maskrcnn_qtvit_1.backbone:kernel=softmax"],
              sizes=DETECTION_SIZES, batch_sizes=[1], modes=["eager", "fused"], repeats=5, budget=600.0,
              max_call=600.0)


def takes_images(model: nn.Module) -> bool:
    """True for torchvision's detectors, which take a list of (C, H, W) images rather than a batch tensor."""
    try:
        from torchvision.models.detection.transform import GeneralizedRCNNTransform
    except ImportError:  # no torchvision, no detector
        return False
    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def _padded_size(transform: nn.Module, h: int, w: int) -> tuple[int, int]:
    """The size of the batch a detector's transform makes of one HxW image (resized, padded to its divisor)."""
    with torch.no_grad():
        return tuple(transform([torch.zeros(3, h, w)])[0].tensors.shape[-2:])


def build_target(spec: str, build: Callable[[str], nn.Module]) -> nn.Module:
    """The model a benchmark spec names, built by ``build`` (name and constructor arguments -> eval model with
    benchmark weights): a detector with its RPN NMS at 1 and score threshold at 0 (see the module docstring), or,
    for ``NAME.backbone``, that detector's backbone+FPN, which maps an image size to its padded batch
    (``input_size_of``). ``bench_note`` says so in the rows' note."""
    from ..._utils import parse_model_spec

    whole, part = split_part(spec)
    model = build(whole)
    if not takes_images(model):
        return model_part(model, part, spec)
    given = parse_model_spec(whole)[1]
    if hasattr(model, "rpn") and "rpn_nms_thresh" not in given:
        model.rpn.nms_thresh = 1.0
        with torch.no_grad():  # random box deltas scale with the features and push boxes off the image
            for p in model.rpn.head.bbox_pred.parameters():
                p.zero_()
    if hasattr(model, "roi_heads") and "box_score_thresh" not in given:
        model.roi_heads.score_thresh = 0.0
    elif hasattr(model, "score_thresh") and "score_thresh" not in given:
        model.score_thresh = 0.0
    model.bench_note = "1000 proposals, 100 detections per image (RPN deltas 0, NMS at 1, score threshold 0)"
    if not part:
        return model
    backbone = model_part(model, part, spec)
    backbone.input_size_of = functools.partial(_padded_size, model.transform)
    backbone.bench_note = "on the detector's padded batch (a multiple of 32)"
    return backbone


def example_input(model: nn.Module, batch: int, h: int, w: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, in_chans: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor | list[torch.Tensor]:
    """What ``model`` is benchmarked on at HxW: ``batch`` images in 0..1 for a detector, else a normal batch tensor
    (at the padded size for a detector's backbone+FPN)."""
    chans = in_chans or getattr(model, "in_chans", 3)
    if takes_images(model):
        return [torch.rand(chans, h, w, generator=generator).to(device, dtype) for _ in range(batch)]
    size_of = getattr(model, "input_size_of", None)
    if size_of is not None:
        h, w = size_of(h, w)
    return torch.randn(batch, chans, h, w, generator=generator).to(device, dtype)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--detection``: the detectors' preset (read ``apply_preset``)."""
    p.add_argument("--detection", action="store_true",
                   help="the detectors at COCO's test size: Mask R-CNN on efficientvit_b1, qtvit_1 and qtvit_1 with "
                        "kernel=softmax at 800x1333, whole (NAME) and backbone+FPN (NAME.backbone), eager and fused, "
                        "batch 1, median of 5; other options given on the command line win")
    p.set_defaults(preset_defaults={k: p.get_default(k) for k in PRESET})


def apply_preset(args: argparse.Namespace, device: torch.device) -> None:
    """With ``--detection``: the preset's settings (``PRESET``) for every option left at its default, and the CSV
    ``results/bench_detectors_<device>.csv`` unless ``--out`` is given."""
    if not args.detection:
        return
    for key, value in PRESET.items():
        if getattr(args, key) is args.preset_defaults[key] or getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)
    if args.out == Path("results/models_cpu.csv"):
        args.out = Path(f"results/bench_detectors_{device.type}.csv")
