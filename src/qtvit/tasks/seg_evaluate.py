"""Segmentation on data: evaluation (mIoU, mAcc, aAcc, per-class IoU and accuracy, loss).

Evaluation follows the dataset's protocol (``data.segmentation``): each evaluation image at its protocol size, the
logits resized (bicubic, as EfficientViT's evaluation) to the labels' own size, one confusion matrix over every
image of every process (``seg_metrics``).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._utils import progress_bar
from ..data import DataConfig
from ..data.seg_folders import IGNORE_INDEX
from ..models.seg_inference import flip_average
from .common import EvalResult
from .inputs import autocast, model_input
from .seg_metrics import SegmentationMetrics, main_logits, upsample_logits

__all__ = ["evaluate_segmentation"]

_logger = logging.getLogger(__name__)

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
