"""Segmentation figure: evaluation images, their ground truth and a trained model's prediction side by side, in
the class colours of ``qtvit predict``'s masks (``seg_palette``), with a legend of the classes shown.

    qtvit figure segmentation --checkpoint runs/seg-scenes            # the first 6 test scenes
    qtvit figure segmentation --checkpoint runs/seg-scenes --images 4 --first 100 --out results/seg.png

The images go through the dataset's evaluation protocol (``segmentation_eval_batches``), exactly as
``qtvit validate`` scores them, and each panel's title gives that image's pixel accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..._io import check_output
from ...data import Shard
from ...tasks import Segmentation
from ...tasks.common import check_classes, classes_and_channels, saved_class_names
from ...tasks.inputs import model_input
from ...tasks.seg_metrics import main_logits, upsample_logits
from ...tasks.seg_predict import seg_palette
from ...tasks.segmentation import segmentation_eval_batches
from ...train.evaluate import load_model
from ..results import save_figure

__all__ = ["predict_examples", "plot_segmentation", "add_segmentation_figure_parser", "add_eval_images_args"]


@torch.no_grad()
def predict_examples(checkpoint: str | Path, data: str | None = None, *, images: int = 6, first: int = 0):
    """(uint8 images [(H, W, C)], labels [(H, W)], predictions [(H, W)], class names) of eval images
    ``first .. first + images - 1`` of `data` (default: the Fashion-MNIST scenes) under the checkpoint's model;
    lists, since a dataset's images differ in size (ADE20K). The dataset's classes must be the model's, as
    ``qtvit validate`` checks."""
    if images < 1 or first < 0:
        raise ValueError(f"--images {images} --first {first}: give at least one image and a first index >= 0")
    net = load_model(checkpoint)
    num_classes = classes_and_channels(net)[0]
    info = Segmentation.open_data(data, num_classes)
    check_classes(net, info.classes, num_classes)  # as validate does
    data_cfg, batches = segmentation_eval_batches(net, info, batch_size=1, shard=Shard(workers=0),
                                                  limit=first + images)
    if batches.num_samples <= first:
        raise ValueError(f"--first {first}: the evaluation split has only {batches.num_samples} images")
    shown, truths, preds = [], [], []
    for i, (x, y) in enumerate(batches.iterate(0)):
        if i < first:
            continue
        logits = main_logits(net(model_input(x, data_cfg, torch.device("cpu"))))
        preds.append(upsample_logits(logits.float(), y.shape[-2:]).argmax(1)[0].numpy())
        shown.append(x[0].expand(3, -1, -1).permute(1, 2, 0).numpy())
        truths.append(y[0].numpy())
    return shown, truths, preds, saved_class_names(net, num_classes)


def plot_segmentation(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                      names: list[str], path: str | Path, title: str = "", ignore_index: int = 255) -> Path:
    """One row per image: the image as the model sees it, its ground truth, the prediction (ignored pixels white
    in both), and a legend of the classes shown."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = np.concatenate([seg_palette(len(names)), np.full((256 - len(names), 3), 255, np.uint8)])
    n = len(images)
    # one row per image and a last, short one for the legend
    fig, axes = plt.subplots(n + 1, 3, figsize=(7.5, 2.5 * n + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": [1] * n + [0.3]})
    for row, (img, truth, pred) in enumerate(zip(images, truths, preds)):
        valid = truth != ignore_index
        acc = 100.0 * float((pred[valid] == truth[valid]).mean()) if valid.any() else float("nan")
        shown_pred = np.where(valid, pred, ignore_index)
        for ax, panel, label in zip(axes[row], (img, palette[truth], palette[shown_pred]),
                                    ("image", "ground truth", f"prediction ({acc:.1f} % of pixels)")):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    present = sorted(set().union(*map(np.unique, [*truths, *preds])) - {ignore_index})
    handles = [Patch(color=palette[c] / 255, label=names[c]) for c in present if c < len(names)]
    for ax in axes[-1]:
        ax.axis("off")
    axes[-1, 1].legend(handles=handles, loc="center", ncol=4, fontsize=7, frameon=False)
    return save_figure(fig, path, title=title)


def add_eval_images_args(s: argparse.ArgumentParser, task: str, default_data: str) -> None:
    """The options of a figure of a `task` checkpoint's predictions on evaluation images (segmentation, detection):
    --checkpoint --data --images --first --out (default results/<task>_predictions.png)."""
    s.add_argument("--checkpoint", type=Path, required=True, help=f"a {task} run folder or weights file")
    s.add_argument("--data", default=None, help=f"the dataset (default: {default_data})")
    s.add_argument("--images", type=int, default=6, help="how many evaluation images")
    s.add_argument("--first", type=int, default=0, help="index of the first evaluation image shown")
    s.add_argument("--out", type=Path, default=Path(f"results/{task}_predictions.png"), help="the PNG written")


def add_segmentation_figure_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("segmentation", help="evaluation images, ground truth and a model's predictions")
    add_eval_images_args(s, "segmentation", "the Fashion-MNIST scenes")
    s.set_defaults(func=_segmentation_cli)


def _segmentation_cli(args: argparse.Namespace) -> int:
    check_output(args.out, overwrite=True)  # before the work
    images, truths, preds, names = predict_examples(args.checkpoint, args.data, images=args.images,
                                                    first=args.first)
    path = plot_segmentation(images, truths, preds, names, args.out,
                             title=f"{args.checkpoint}: evaluation images {args.first}..{args.first + len(images) - 1}")
    print(f"wrote {path}")
    return 0
