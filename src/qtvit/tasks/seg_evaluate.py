"""Segmentation on data and on image files: evaluation (mIoU, mAcc, aAcc, per-class IoU and accuracy, loss) and the
colour masks and overlays of prediction.

Evaluation follows the dataset's protocol (``data.segmentation``): each evaluation image at its protocol size, the
logits resized (bicubic, as EfficientViT's evaluation) to the labels' own size, one confusion matrix over every
image of every process (``seg_metrics``). Prediction runs one image at a time at its own size (or its short side
resized to ``img_size``, multiples of 32, as the ADE20K protocol), and writes for ``<name>.<ext>``:

* ``<name>_mask.png``: the predicted class of every pixel, at the image's size, as a palette PNG: its pixel values
  are the class indices and its palette the fixed colours of ``seg_palette`` (class 0 black, then the Pascal VOC
  colour map), so it reads back as labels (``np.array(Image.open(p))``) and shows in colour;
* ``<name>_overlay.png``: the image blended half and half with the mask's colours (RGB).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .._io import atomic_write, check_output
from .._utils import progress_bar
from ..data import DataConfig, open_image
from ..data.seg_folders import IGNORE_INDEX
from ..data.seg_transforms import SegEvalTransform
from ..data.transforms import pil_to_uint8
from ..models.seg_inference import flip_average
from .common import EvalResult
from .inputs import autocast, model_input
from .seg_metrics import SegmentationMetrics, upsample_logits

__all__ = ["main_logits", "evaluate_segmentation", "seg_palette", "segment_images"]

_logger = logging.getLogger(__name__)

def main_logits(output, model_name: str = "the model") -> torch.Tensor:
    """The per-pixel logits (B, K, h, w) of a model's output: its first element when it is (logits, aux_logits)."""
    logits = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{model_name} returned {shape}, not per-pixel logits (B, classes, h, w): segmentation "
                         "needs a segmentation model (efficientvit_seg_*, qtvit_seg_*, upernet_*), or train it "
                         "with --task classification")
    return logits


def _nan_to_none(values: list[float]) -> list[float | None]:
    # an undefined class (no pixel labelled or predicted) is None: JSON and CSV have no NaN
    return [None if math.isnan(v) else round(v, 4) for v in values]


def _view_logits(model: nn.Module, x: torch.Tensor, size, amp: str, flip: bool) -> torch.Tensor:
    """float32 logits of one view at the labels' `size` (bicubic), averaged with the mirror image's when `flip`."""
    def run(images: torch.Tensor) -> torch.Tensor:
        return main_logits(model(images)).float()

    with autocast(x.device, amp):
        # the (bicubic) upsampling is linear and commutes with the mirror: averaging before it is the same
        logits = flip_average(run, x) if flip else run(x)
    return upsample_logits(logits, size)  # once, for the metric and the loss


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, batches, data_cfg: DataConfig, device: torch.device, num_classes: int,
                          amp: str = "none", channels_last: bool = False, ignore_index: int = IGNORE_INDEX,
                          flip: bool = False, progress: bool = False) -> EvalResult:
    """mIoU, mAcc, aAcc (percent), per-class IoU and accuracy (percent, None where undefined), the mean
    cross-entropy per labelled pixel and the image count over `batches` (all processes). `flip` averages the
    logits of each image and its mirror image (mmsegmentation's flip test; twice the model's time). Batches whose
    images are a list of views (the multi-scale test, ``SegEvalTransform(scales=...)``) are scored on the mean of
    the views' class probabilities at the labels' size (as mmsegmentation's multi-scale test), each view's logits
    flip-averaged first when `flip`; the loss is then the cross-entropy of that mean."""
    was_training = model.training
    model.eval()
    metric = SegmentationMetrics(num_classes, device, ignore_index)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images
    for x, y in progress_bar(batches.iterate(0), len(batches), "evaluating", progress):
        y = y.to(device)
        views = [_view_logits(model, model_input(v, data_cfg, device, channels_last), y.shape[-2:], amp, flip)
                 for v in (x if isinstance(x, (list, tuple)) else [x])]
        # Several views: log of the mean probability (whose argmax and cross-entropy are the mean's), by logsumexp so
        # that a class no view gives any probability stays finite.
        logits = views[0] if len(views) == 1 else (
            torch.logsumexp(torch.stack([v.log_softmax(1) for v in views]), 0) - math.log(len(views)))
        metric.update(logits, y)
        sums += torch.stack([F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum").double(),
                             (y != ignore_index).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    s = metric.compute()  # summed over processes by torchmetrics
    model.train(was_training)
    if sums[2] > 0 and sums[1] == 0:
        _logger.warning("the evaluation masks hold no labelled pixel (every pixel is the ignore label %d), so mIoU, "
                        "mAcc and aAcc are undefined; check the masks (their values are the classes)", ignore_index)
    return EvalResult({k: round(s[k], 4) for k in ("miou", "macc", "aacc")}, float(sums[0] / sums[1].clamp(min=1)),
                      int(sums[2]), {k: _nan_to_none(s[k]) for k in ("iou", "acc")})


# ----------------------------------------------------------------------------------------------- prediction
def seg_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the Pascal VOC colour map (class 0 black, 1 dark red, 2 dark green, ...), the
    bits of the class index spread over the high bits of R, G and B; distinct for up to 2**24 classes."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for i in range(num_classes):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        palette[i] = rgb
    return palette


def _write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda t: image.save(t, format="PNG"))


def _output_names(images: list, output_dir: Path, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """Each image's (mask, overlay) paths, checked before any work: no two images share a name, no output lands on
    an input image (not even with `overwrite`: it may not have been read yet), and no existing file is replaced
    unless `overwrite`."""
    check_output(output_dir, folder=True)
    stems = [Path(p).stem for p in images]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise ValueError(f"several images are named {dup!r}; their masks would overwrite each other in "
                         f"{output_dir}: predict them in separate calls with separate --output-dir")
    names = [(output_dir / f"{s}_mask.png", output_dir / f"{s}_overlay.png") for s in stems]
    inputs = {os.path.realpath(p) for p in images}
    for out in (o for pair in names for o in pair):
        if os.path.realpath(out) in inputs:
            raise FileExistsError(f"{out} is one of the input images; predict into another --output-dir")
        check_output(out, overwrite=overwrite)
    return names


@torch.no_grad()
def segment_images(net: nn.Module, images: list[str | os.PathLike], output_dir: str | os.PathLike,
                   data_cfg: DataConfig, class_names: list[str], img_size: int | None = None,
                   alpha: float = 0.5, overwrite: bool = False) -> Iterator[dict]:
    """For each image file, in order: its mask and overlay PNGs written (see the module docstring) and
    {"image", "mask", "overlay", "size": [H, W], "classes": {name: share of pixels}} (largest share first)."""
    output_dir = Path(output_dir).expanduser()
    names = _output_names(images, output_dir, overwrite)
    dev = next(net.parameters()).device
    view = SegEvalTransform(short_side=img_size)
    palette = seg_palette(len(class_names))
    mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
    for path, (mask_path, overlay_path) in zip(images, names):
        x = pil_to_uint8(open_image(path, mode))  # a bad file raises, naming it
        logits = main_logits(net(model_input(view(x, None)[0][None], data_cfg, dev)))
        labels = upsample_logits(logits.float(), x.shape[-2:]).argmax(1)[0].cpu().numpy()
        labels = labels.astype(np.uint8 if len(palette) <= 256 else np.int64)
        colour = palette[labels]
        if len(palette) <= 256:  # indices and colours in one file
            mask = Image.fromarray(labels)  # "L"; putpalette makes it "P"
            mask.putpalette(palette.flatten().tolist())
        else:
            mask = Image.fromarray(colour)
        rgb = x.expand(3, -1, -1).permute(1, 2, 0).numpy().astype(np.float32)
        overlay = np.rint((1 - alpha) * rgb + alpha * colour).astype(np.uint8)
        _write_png(mask_path, mask)
        _write_png(overlay_path, Image.fromarray(overlay))
        counts = np.bincount(labels.ravel(), minlength=len(class_names)) / labels.size
        order = np.argsort(-counts, kind="stable")
        yield {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "size": list(labels.shape),
               "classes": {class_names[i]: round(float(counts[i]), 6) for i in order if counts[i] > 0}}
