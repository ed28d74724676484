"""Exponential moving average of a model's weights, with the official EfficientViT/QT-ViT warm-up of the decay."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

__all__ = ["ModelEma", "ema_decay_at"]


def ema_decay_at(step: int, decay: float, warmup_steps: int) -> float:
    """decay_t = decay * (1 - exp(-step / warmup_steps)) (SPEC C.6); plain `decay` when warmup_steps is 0."""
    return decay * (1 - math.exp(-step / warmup_steps)) if warmup_steps > 0 else decay


class ModelEma(nn.Module):
    """A frozen copy of the model whose floating-point state (weights and BN statistics) follows
    ``ema -= (1 - decay_t) * (ema - model)`` after every optimiser step; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: int = 4000):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup_steps = decay, warmup_steps

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup_steps)
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.is_floating_point():
                v.sub_((v - src[k].detach().to(v.dtype)) * (1 - d))
            else:
                v.copy_(src[k])
