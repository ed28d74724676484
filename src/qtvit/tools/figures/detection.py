"""Detection figure: evaluation images with their ground truth beside a trained detector's predictions, both drawn as
``qtvit predict`` draws detections (``draw_detections``: masks blended and boxes outlined in the class colours of
``seg_palette``, with the class name, and the score of a prediction).

    qtvit figure detection --checkpoint runs/det-scenes                # the first 6 test scenes
    qtvit figure detection --checkpoint runs/det-scenes --images 4 --first 100 --score-threshold 0.3

The images go through the dataset's evaluation protocol (``detection_eval_batches``), exactly as ``qtvit validate``
scores them, and each prediction panel's title counts the detections drawn and the objects of the ground truth.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..._io import check_output
from ...data import Shard
from ...tasks import Detection, task_of
from ...tasks.common import check_classes, classes_and_channels, saved_class_names
from ...tasks.det_predict import SCORE_THRESHOLD, draw_detections
from ...tasks.detection import check_category_ids, detection_eval_batches
from ...train.evaluate import load_model
from ..results import save_figure
from .segmentation import add_eval_images_args

__all__ = ["predict_examples", "plot_detection", "add_detection_figure_parser"]


@torch.no_grad()
def predict_examples(checkpoint: str | Path, data: str | None = None, *, images: int = 6, first: int = 0):
    """(uint8 images [(3, H, W)], targets [{"boxes", "labels", "masks", ...}], detections [{"boxes", "labels",
    "scores"[, "masks"]}], class names) of eval images ``first .. first + images - 1`` of `data` (default: the
    Fashion-MNIST scenes' test split) under the checkpoint's detector: every detection it returns, whatever its
    score. The dataset's classes and category ids must be the model's, as ``qtvit validate`` checks."""
    if images < 1 or first < 0:
        raise ValueError(f"--images {images} --first {first}: give at least one image and a first index >= 0")
    net = load_model(checkpoint)
    task = task_of(net)
    if task is not Detection:
        raise ValueError(f"{checkpoint} holds a {task.name} model ({net.pretrained_cfg.get('architecture')}), not a "
                         "detector: pass a run trained with --task detection (`qtvit figure segmentation` shows a "
                         "segmentation model's predictions)")
    num_classes = classes_and_channels(net)[0]
    info = Detection.open_data(data, num_classes)
    check_classes(net, info.classes, num_classes)  # as validate does
    check_category_ids(net, info)
    batches = detection_eval_batches(info, batch_size=1, shard=Shard(workers=0), limit=first + images)
    if batches.num_samples <= first:
        raise ValueError(f"--first {first}: the evaluation split has only {batches.num_samples} images")
    shown, truths, preds = [], [], []
    for i, (xs, targets) in enumerate(batches.iterate(0)):
        if i < first:
            continue
        det = net(xs)[0]
        preds.append({k: v.float() if v.is_floating_point() else v for k, v in det.items()})
        shown.append(xs[0].mul(255).round_().to(torch.uint8))
        truths.append(targets[0])
    return shown, truths, preds, saved_class_names(net, num_classes)


def plot_detection(images: Sequence[torch.Tensor], truths: Sequence[dict], preds: Sequence[dict], names: list[str],
                   path: str | Path, score_threshold: float = SCORE_THRESHOLD, title: str = "") -> Path:
    """One row per image: its ground truth and the detections scoring at least `score_threshold`, drawn alike."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(6.5, 3.2 * n), squeeze=False)
    for row, (img, truth, pred) in enumerate(zip(images, truths, preds)):
        keep = pred["scores"] >= score_threshold
        kept = {k: v[keep] for k, v in pred.items()}
        objects = {k: truth[k] for k in ("boxes", "labels", "masks") if k in truth}  # no scores: plain class names
        for ax, det, label in zip(axes[row], (objects, kept),
                                  ("ground truth", f"{int(keep.sum())} detections, {len(truth['labels'])} objects")):
            ax.imshow(draw_detections(img, det, names).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    return save_figure(fig, path, title=title)


def add_detection_figure_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("detection", help="evaluation images: ground truth beside a detector's predictions")
    add_eval_images_args(s, "detection", "the Fashion-MNIST scenes' instances")
    s.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                   help="the detections drawn score at least this")
    s.set_defaults(func=_detection_cli)


def _detection_cli(args: argparse.Namespace) -> int:
    if not 0 <= args.score_threshold <= 1:
        raise ValueError(f"--score-threshold {args.score_threshold} is not a score; pass one in 0..1 (e.g. 0.5)")
    check_output(args.out, overwrite=True)  # before the work
    images, truths, preds, names = predict_examples(args.checkpoint, args.data, images=args.images,
                                                    first=args.first)
    last = args.first + len(images) - 1
    path = plot_detection(images, truths, preds, names, args.out, args.score_threshold,
                          title=f"{args.checkpoint}: evaluation images {args.first}..{last}, "
                                f"scores >= {args.score_threshold:g}")
    print(f"wrote {path}")
    return 0
