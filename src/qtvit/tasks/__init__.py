"""Tasks: what differs between trainings, validations and predictions of classification, segmentation and detection. The
training loop, its set-up, ``validate``, ``predict`` and the CLI reach a task through one lookup, ``get_task`` (by
name) or ``task_of`` (the task a model declares: ``pretrained_cfg["task"]``, classification when absent); nothing
outside this package compares task names.

A task is a class (classification.py, segmentation.py, detection.py). What the run asks of it before it has one:

- ``open_data(data, num_classes)``: the dataset description a --data value names (classes, ignore index, mean/std,
  layout), refusing the other task's datasets;
- ``check_config(cfg)``: the task's own option checks; ``batches(cfg, info, data_cfg, shard)``: the training,
  evaluation and BN re-estimation batches; ``recorded(cfg, info)``: what the saved weights keep besides the
  preprocessing and class names (segmentation's evaluation size, detection's category ids);
- ``validate(net, info, num_classes, device, shard, options)`` and ``predict(net, images, names, options)`` for a
  saved model, ``describe(result)``: the line ``qtvit validate`` prints.

An instance (``task(num_classes, data_cfg, cfg, info)``) is what the loop calls at each step: ``batch``, ``loss``,
``train_module``, ``evaluate`` (an ``EvalResult``); ``metric`` names the score that picks the best weights (higher
is better), ``scores`` those that go into the metrics row, summary.json and the closing line, under those names.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn

from ..checkpoints import CheckpointError
from .common import EvalResult, check_evaluated
from .classification import Classification
from .segmentation import Segmentation
from .detection import Detection

__all__ = ["Task", "TASKS", "get_task", "task_of", "EvalResult", "check_evaluated", "Classification", "Segmentation",
           "Detection"]

TASKS: dict[str, type] = {t.name: t for t in (Classification, Segmentation, Detection)}


class Task(Protocol):
    """What the loop asks of a task at each step (see the module docstring)."""

    name: str
    metric: str
    scores: tuple[str, ...]

    def train_module(self, model: nn.Module) -> nn.Module: ...

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator): ...

    def loss(self, output, target) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> EvalResult: ...


def get_task(name: str) -> type:
    """The task class named `name` (``classification``, ``segmentation``, ``detection``)."""
    if name not in TASKS:
        raise ValueError(f"task {name!r}: use {', '.join(TASKS)}")
    return TASKS[name]


def task_of(net: nn.Module) -> type:
    """The task class a model declares (``pretrained_cfg["task"]``: recorded in saved weights and set by the
    segmentation and detection models; older files and classifiers: classification)."""
    name = (getattr(net, "pretrained_cfg", None) or {}).get("task") or Classification.name
    if name not in TASKS:
        raise CheckpointError(f"the checkpoint was trained for task {name!r}, which this qtvit does not know "
                              f"({', '.join(TASKS)}); update qtvit")
    return TASKS[name]
