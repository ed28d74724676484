"""What a run carries from step to step and saves in its checkpoints: counters, history, best result, the partial
sums of the current epoch, and the random number generators.

Everything here is made of tensors, numbers, strings, None and lists/dicts of those, so a checkpoint's
``train_state.pt`` loads with ``torch.load(weights_only=True)``: resuming never unpickles arbitrary objects.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["RunState", "rng_state", "set_rng_state"]


@dataclass
class RunState:
    """The position of a run and what it has measured so far."""
    epoch: int = 0                 # epochs completed
    step_in_epoch: int = 0         # steps completed in the current epoch
    global_step: int = 0
    skipped_steps: int = 0         # steps whose gradients were not finite
    lr: float = 0.0                # the learning rate of the last step
    history: list = field(default_factory=list)  # one row per completed epoch (metrics.csv)
    # the best evaluation by the task's metric: its scores (e.g. top1, top5), epoch, step, which weights, metric
    best: dict = field(default_factory=lambda: {"epoch": -1, "which": ""})
    # per-class scores of every evaluation (segmentation): {"epoch", "step", "which", "iou": [...], "acc": [...]}
    per_class: list = field(default_factory=list)
    # the row of an epoch saved before its evaluation (end_epoch); None once the evaluation is in the history
    pending: dict | None = None
    # Sums over the current epoch's steps so far: a run resumed mid-epoch adds to them, so the epoch's row
    # covers the whole epoch, not only the steps after the resume.
    loss_sum: float = 0.0
    loss_steps: int = 0
    images: int = 0
    time_s: float = 0.0
    cpu_s: float = 0.0

    def start_epoch_sums(self) -> None:
        self.loss_sum, self.loss_steps, self.images, self.time_s, self.cpu_s = 0.0, 0, 0, 0.0, 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rng_state(aug_gen: torch.Generator) -> dict:
    """Every random number generator the loop draws from (torch, CUDA, numpy, Python, the augmentation's)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "aug": aug_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss}}


def set_rng_state(s: dict, aug_gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(s["torch"])
    aug_gen.set_state(s["aug"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
