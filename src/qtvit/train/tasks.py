"""What differs between trainings: the task's batch, loss and metric. The loop (engine.py) is the same for every
task; a task plugs into it with these methods:

- ``batch(x, y, device, gen)``: the model input and the training target from a loader batch (augmentations
  included);
- ``loss(output, target)``: a scalar;
- ``evaluate(model, batches, device)``: a dict of metrics over an evaluation set (all processes): the scores
  that ``scores`` names (numbers; they go into the metrics row, e.g. ``top1``), ``loss`` and ``images``, and
  optionally per-class lists ``per_class_<name>`` (one value per class; the run writes them to per_class.csv and
  summary.json). The attribute ``metric`` names the score that picks the best weights (higher is better);
- ``train_module(model)``: the module the loop calls in training (the model itself, or a view of it that returns
  what the loss needs, e.g. auxiliary logits); DDP wraps it, so its forward is the one that runs.

Classification: smoothed (mixed) one-hot targets, cross-entropy, top-1/top-5. Segmentation: photometric jitter,
per-pixel cross-entropy with ignored pixels (255) left out, plus UperNet's auxiliary loss, mIoU.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataConfig, mixup_cutmix
from ..data.transforms import BatchAugment
from ..data.seg_transforms import SegBatchAugment
from .evaluate import evaluate
from .seg_evaluate import evaluate_segmentation, main_logits

__all__ = ["Task", "Classification", "Segmentation", "create_task"]


class Task(Protocol):
    """What the loop asks of a task (see the module docstring)."""

    metric: str
    scores: tuple[str, ...]

    def train_module(self, model: nn.Module) -> nn.Module: ...

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator): ...

    def loss(self, output, target) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> dict: ...


class Classification:
    """Image classification: smoothed one-hot targets mixed by mixup/cutmix, cross-entropy (or BCE), top-1/top-5."""

    metric = "top1"
    scores = ("top1", "top5")

    def __init__(self, num_classes: int, data_cfg: DataConfig, cfg, amp: str = "none"):
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, amp
        self.augment = BatchAugment(data_cfg.mean, data_cfg.std, cfg.randaug_n, cfg.randaug_m, cfg.reprob)

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = self.augment(x)  # uint8 in, normalised float out
        off = self.cfg.smoothing / self.num_classes
        target = torch.full((len(y), self.num_classes), off, device=y.device)
        target.scatter_(1, y[:, None], 1 - self.cfg.smoothing + off)
        x, target = mixup_cutmix(x, target, self.cfg.mixup, self.cfg.cutmix, gen)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, target

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"{self.cfg.model} returned {tuple(logits.shape)}, not class logits (B, classes): "
                             "train a segmentation model with --task segmentation")
        logits = logits.float()
        if self.cfg.bce:
            return F.binary_cross_entropy_with_logits(logits, target)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> dict:
        return evaluate(model, batches, self.data_cfg, device, self.num_classes, self.amp,
                        self.cfg.channels_last)


class _WithAux(nn.Module):
    """In training, ``model.forward_with_aux(x)``: (logits, aux_logits) for the auxiliary loss; in eval, ``model(x)``.
    A module of its own so that DDP, which wraps it, runs its hooks around the forward that is used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_aux(x) if self.training else self.model(x)


class Segmentation:
    """Semantic segmentation: photometric jitter of the images (masks untouched), per-pixel cross-entropy on the
    logits resized to the mask (plus `aux_weight` x that of the auxiliary logits when the model gives them), mIoU."""

    metric = "miou"
    scores = ("miou", "macc", "aacc")

    def __init__(self, num_classes: int, data_cfg: DataConfig, cfg, amp: str = "none", ignore_index: int = 255):
        if num_classes > ignore_index:  # the label that marks unlabelled pixels cannot also be a class
            raise ValueError(f"--num-classes {num_classes}: segmentation labels 0-{ignore_index - 1} are classes and "
                             f"{ignore_index} is the ignore label (unlabelled pixels), so at most {ignore_index} "
                             "classes fit; give fewer")
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, amp
        self.ignore_index, self.aux_weight = ignore_index, cfg.aux_weight
        self.augment = SegBatchAugment(data_cfg.mean, data_cfg.std, jitter=cfg.seg_jitter)

    def train_module(self, model: nn.Module) -> nn.Module:
        return _WithAux(model) if hasattr(model, "forward_with_aux") else model

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator):
        # uint8 in, jittered and normalised float out; the jitter draws from the global torch RNG (in checkpoints)
        x = self.augment(x.to(device, non_blocking=True))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The head's stride (4, 8, 16) is undone on the logits, bilinearly as mmseg and EfficientViT train, so the
        # loss sees every labelled pixel of the crop.
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        kept = target != self.ignore_index
        if self.cfg.ohem > 0:
            kept = hard_pixels(loss.detach(), kept, self.cfg.ohem)
        # The mean over the kept pixels (torch's "mean"), but 0 rather than NaN for a crop with none labelled.
        return (loss * kept).sum() / kept.sum().clamp(min=1)

    def loss(self, output, target: torch.Tensor) -> torch.Tensor:
        logits = main_logits(output, self.cfg.model)
        loss = self._cross_entropy(logits, target)
        aux = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if aux is not None:  # even at weight 0: DDP needs every parameter in the graph (a zero gradient is fine)
            loss = loss + self.aux_weight * self._cross_entropy(aux, target)
        return loss

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> dict:
        return evaluate_segmentation(model, batches, self.data_cfg, device, self.num_classes, self.amp,
                                     self.cfg.channels_last, self.ignore_index)


def hard_pixels(pixel_loss: torch.Tensor, labelled: torch.Tensor, threshold: float,
                min_fraction: float = 1 / 16) -> torch.Tensor:
    """mmseg's OHEM pixel sampler: the labelled pixels whose own class has probability below `threshold`, or, when
    fewer are that hard, the `min_fraction` of labelled pixels with the lowest probability (so easy background does
    not fill the mean, and a batch of easy pixels still trains). `pixel_loss` is the per-pixel cross-entropy,
    -log p(own class)."""
    hard = labelled & (pixel_loss > -math.log(threshold))
    min_kept = int(min_fraction * labelled.sum())
    if hard.sum() < min_kept:  # by rank, so ties (p = 1 in float32) cannot keep them all
        ranked = torch.where(labelled, pixel_loss, -1.0).flatten().topk(min_kept).indices
        hard = torch.zeros_like(labelled).flatten().index_fill_(0, ranked, True).view_as(labelled)
    return hard


def create_task(cfg, num_classes: int, data_cfg: DataConfig) -> Task:
    """The task `cfg.task` names."""
    kinds = {"classification": Classification, "segmentation": Segmentation}
    if cfg.task not in kinds:
        raise ValueError(f"--task {cfg.task!r}: use {' or '.join(kinds)}")
    return kinds[cfg.task](num_classes, data_cfg, cfg, cfg.amp)
