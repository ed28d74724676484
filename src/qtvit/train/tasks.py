"""What differs between trainings: the task's batch, loss and metric. The loop (engine.py) is the same for every
task; a task plugs into it with three methods:

- ``batch(x, y, device, gen)``: the model input and the training target from a loader batch (augmentations
  included);
- ``loss(output, target)``: a scalar;
- ``evaluate(model, batches, device)``: a dict of metrics over an evaluation set (all processes); the attribute
  ``metric`` names the one that picks the best weights (higher is better).

Classification is the only task for now; segmentation comes with its own batch, loss and metric.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataConfig, mixup_cutmix
from ..data.transforms import BatchAugment
from .evaluate import evaluate

__all__ = ["Task", "Classification"]


class Task(Protocol):
    """What the loop asks of a task (see the module docstring)."""

    metric: str

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator): ...

    def loss(self, output, target) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> dict: ...


class Classification:
    """Image classification: smoothed one-hot targets mixed by mixup/cutmix, cross-entropy (or BCE), top-1/top-5."""

    metric = "top1"

    def __init__(self, num_classes: int, data_cfg: DataConfig, cfg, amp: str = "none"):
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, amp
        self.augment = BatchAugment(data_cfg.mean, data_cfg.std, cfg.randaug_n, cfg.randaug_m, cfg.reprob)

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
        logits = logits.float()
        if self.cfg.bce:
            return F.binary_cross_entropy_with_logits(logits, target)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> dict:
        return evaluate(model, batches, self.data_cfg, device, self.num_classes, self.amp,
                        self.cfg.channels_last)
