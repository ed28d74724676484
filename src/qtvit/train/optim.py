"""AdamW parameter groups (no decay on norms and biases) and the learning-rate schedule (linear warm-up, then cosine
or poly decay)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["param_groups", "create_optimizer", "lr_at"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, no_decay_keys: tuple[str, ...] = ("norm", "bias")):
    """Two groups: decayed weights, and the parameters of normalisation layers, biases and any parameter whose
    name contains one of `no_decay_keys` (the official EfficientViT rule) with weight decay 0."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in no_decay_ids or any(k in name for k in no_decay_keys):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                     fused: bool = False):
    """AdamW over :func:`param_groups`; the learning rate is set every step by the loop from :func:`lr_at`.
    `fused`: torch's fused kernel, one pass over every parameter instead of a loop of small ops per tensor (on CPU
    torch's default is that loop); the same update up to rounding."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             **({"fused": True} if fused else {}))


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0,
          warmup_lr: float = 0.0, schedule: str = "cosine", power: float = 0.9) -> float:
    """Linear warm-up from `warmup_lr` to `lr` over `warmup_steps`, then decay to `min_lr` at `total_steps`:
    cosine, or poly ``min_lr + (lr - min_lr) * (1 - t) ** power`` (mmseg's PolyLR, power 0.9 in its segmentation
    recipes), t the fraction of the decay done."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    t = min((step - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    if schedule == "poly":
        return min_lr + (lr - min_lr) * (1 - t) ** power
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use cosine or poly")
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
