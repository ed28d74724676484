"""BatchNorm statistics re-estimated from data: one function for training (before evaluation, as the official
``reset_bn``) and export (non-trivial statistics for a randomly initialised model)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = ["reestimate_bn"]


@torch.no_grad()
def reestimate_bn(model: nn.Module, inputs: Iterable[torch.Tensor], num_images: int,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Set every BatchNorm's running statistics to the plain average over the first `num_images` of `inputs`.

    `inputs` yields model-ready batches (normalised, on the model's device). The model runs in train mode without
    gradients and with ``momentum=None`` (a cumulative average); `reduce` (e.g. a mean over processes) is applied
    to the final statistics. Momenta and the train/eval mode are restored. Returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_images <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x in inputs:
            model(x)
            seen += len(x)
            if seen >= num_images:
                break
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    if reduce is not None:
        for m in bns:
            if m.running_mean is not None:
                m.running_mean.copy_(reduce(m.running_mean))
                m.running_var.copy_(reduce(m.running_var))
    return seen
