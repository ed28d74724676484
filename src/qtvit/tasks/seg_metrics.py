"""Semantic segmentation metrics: mIoU, mAcc, aAcc and per-class IoU / accuracy, as mmseg and EfficientViT report
them, from one confusion matrix accumulated over the whole evaluation set.

The matrix is torchmetrics' ``MulticlassConfusionMatrix`` (rows: true class, columns: predicted class; pixels
labelled ``ignore_index`` are left out), summed over batches and, when a process group is up, over processes
(torchmetrics syncs its state in ``compute``). From it, per class c:

* IoU(c) = TP / (TP + FP + FN) = C[c, c] / (row sum + column sum - C[c, c]);
* Acc(c) = TP / (TP + FN) = C[c, c] / row sum;

dataset-wide, not averaged over images. mIoU and mAcc are their means over the classes that are defined (a class
with no pixel in the labels and none predicted has no IoU; a class absent from the labels has no accuracy: NaN,
left out of the mean, as mmseg's ``nanmean``); aAcc is the fraction of labelled pixels predicted right.
All in percent.
"""
from __future__ import annotations

import torch

from ..data.seg_folders import IGNORE_INDEX
from ..layers.resize import resize_to

__all__ = ["SegmentationMetrics", "main_logits", "upsample_logits", "scores_from_confusion"]


def main_logits(output, model_name: str = "the model") -> torch.Tensor:
    """The per-pixel logits (B, K, h, w) of a model's output: its first element when it is (logits, aux_logits)."""
    logits = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{model_name} returned {shape}, not per-pixel logits (B, classes, h, w): segmentation "
                         "needs a segmentation model (efficientvit_seg_*, qtvit_seg_*, upernet_*), or train it "
                         "with --task classification")
    return logits


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Logits (B, K, h, w) in float32 resized to the labels' (H, W) (unchanged when they have that size): the one
    resize of logits for the metric, the evaluation loss and prediction (bicubic, as EfficientViT's evaluation,
    ``efficientvit.models.utils.resize``) and for the training loss (bilinear, as mmseg and EfficientViT train)."""
    return resize_to(logits.float(), size, mode)


def scores_from_confusion(confusion: torch.Tensor) -> dict:
    """mIoU, mAcc, aAcc (percent) and the per-class IoU / Acc lists (percent, NaN where undefined) of a K x K
    confusion matrix (rows: true class, columns: predicted)."""
    c = confusion.double()
    tp, label, pred = c.diag(), c.sum(1), c.sum(0)
    union = label + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(label > 0, tp / label.clamp(min=1), torch.full_like(tp, float("nan")))
    total = float(label.sum())
    return {"miou": 100 * float(iou.nanmean()) if iou.isfinite().any() else float("nan"),
            "macc": 100 * float(acc.nanmean()) if acc.isfinite().any() else float("nan"),
            "aacc": 100 * float(tp.sum()) / total if total else float("nan"),
            "iou": (100 * iou).tolist(), "acc": (100 * acc).tolist(), "pixels": int(total)}


class SegmentationMetrics:
    """Accumulates the confusion matrix of predictions against int64 labels (B, H, W) with `ignore_index` left
    out; ``update`` takes logits (B, K, h, w), resized to the labels' size when they differ, or class indices
    (B, H, W). ``compute`` returns ``scores_from_confusion`` over every batch of every process."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = IGNORE_INDEX):
        from torchmetrics.classification import MulticlassConfusionMatrix
        if num_classes < 1:
            raise ValueError(f"{num_classes} classes: pass a positive number of classes")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is one of the {num_classes} classes; use {IGNORE_INDEX} "
                             "(or -1)")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index).to(device)

    def update(self, output: torch.Tensor, labels: torch.Tensor) -> None:
        if output.dim() == 4:
            if output.shape[1] != self.num_classes:
                raise ValueError(f"logits have {output.shape[1]} classes, the metric {self.num_classes}")
            output = upsample_logits(output, labels.shape[-2:]).argmax(1)
        if output.shape != labels.shape:
            raise ValueError(f"predictions {tuple(output.shape)} and labels {tuple(labels.shape)} differ in shape")
        self.confusion.update(output, labels)

    def reset(self) -> None:
        self.confusion.reset()

    def compute(self) -> dict:
        return scores_from_confusion(self.confusion.compute())
