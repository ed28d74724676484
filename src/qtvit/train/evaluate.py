"""Using a saved model (any weights file, checkpoint folder or run folder) as the task it was trained for (the task
the model declares, see ``qtvit.tasks``): ``validate`` on a dataset and ``predict`` on image files; and BN
re-estimation before an evaluation in training.

A saved model describes itself: its architecture, constructor arguments and preprocessing (input size, crop,
interpolation, mean, std) and class names are in the file, so ``load_model`` needs nothing else; ``img_size`` and
``crop_pct`` override the preprocessing when asked.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.nn as nn

from ..data import DataConfig
from ..layers.norm import reestimate_bn
from ..checkpoints import CheckpointError, read_config, resolve_weights
from ..models import create_model
from ..tasks import check_evaluated, task_of
from ..tasks.common import check_classes, classes_and_channels, saved_class_names
from ..tasks.inputs import model_input
from .distributed import all_reduce_mean, cleanup_distributed, resolve_device, setup_distributed

__all__ = ["reestimate_bn_on", "load_model", "validate", "predict", "iter_predictions"]


def reestimate_bn_on(model: nn.Module, batches, data_cfg: DataConfig, device: torch.device, num_images: int,
                     epoch_id: int = 10**6) -> int:
    """``layers.norm.reestimate_bn`` on training batches, averaged over processes. The batches come in the fixed
    order of (seed, `epoch_id`), an epoch training never reaches, so the re-estimation draws no training RNG."""
    inputs = (model_input(x, data_cfg, device) for x, _ in batches.iterate(epoch_id))
    return reestimate_bn(model, inputs, num_images, reduce=all_reduce_mean)



# ----------------------------------------------------------------------------------------------- a saved model
def load_model(checkpoint: str | os.PathLike | None, model: str | None = None, num_classes: int | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model in eval mode: ``create_model(checkpoint_path=...)`` on a weights file (any format),
    checkpoint folder or run folder (its best weights, else its latest checkpoint). `model` and `num_classes`,
    when given, must match what was saved; a file without a saved config needs `model`. Without a checkpoint,
    `model` with its official weights (``--pretrained``)."""
    if checkpoint is None:
        if model is None:
            raise ValueError("pass --checkpoint <weights>, or --pretrained with --model <name> for official weights")
        return create_model(model, pretrained=True).to(resolve_device(device)).eval()
    path = resolve_weights(checkpoint)
    saved = read_config(path)
    arch = saved.get("architecture") if saved else None
    if arch is None and model is None:
        raise CheckpointError(f"{path} does not say which model it holds; pass --model")
    if model and arch and model != arch:
        raise CheckpointError(f"{path} holds weights of model {arch!r}, not {model!r}; pass --model {arch} "
                              "(or leave --model out to use the checkpoint's)")
    saved_classes = (saved or {}).get("model_args", {}).get("num_classes")
    if num_classes and saved_classes and num_classes != saved_classes:
        raise CheckpointError(f"{path} was trained for {saved_classes} classes, not {num_classes}; pass "
                              f"--num-classes {saved_classes} or another checkpoint")
    extra = {"num_classes": num_classes} if num_classes and not saved_classes else {}
    net = create_model(model or arch, checkpoint_path=path, **extra)
    return net.to(resolve_device(device)).eval()


def validate(checkpoint: str | os.PathLike, model: str | None = None, data: str | None = None, *,
             batch_size: int | None = None, img_size: int | None = None, crop_pct: float | None = None,
             device: str = "auto", amp: str = "none", limit: int | None = None, workers: int = 4,
             flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> dict:
    """A saved model on a dataset's eval split, scored as its task does (recorded in the file): top-1 / top-5
    (micro, percent) and loss on Fashion-MNIST test by default, with the saved preprocessing (or `img_size` /
    `crop_pct`); or mIoU, mAcc, aAcc, per-class IoU / accuracy ({class: percent}) and loss on the Fashion-MNIST
    scenes by default, with the dataset's evaluation protocol (`img_size`: resize the short side to it; `flip`:
    average with the mirrored images' logits; `scales`: the multi-scale test, ratios of that size, the views'
    probabilities averaged); or COCO's box (and mask) AP and AR and per-class AP of a detector on the test scenes'
    instances by default, or a COCO-format folder (see tasks/detection.py). `batch_size`: 256 images for a
    classifier, 8 for segmentation, 4 for a detector unless given."""
    d = setup_distributed(device)
    try:
        net = load_model(checkpoint, model, device=d.device)
        num_classes, task = classes_and_channels(net)[0], task_of(net)
        info = task.open_data(data, num_classes)
        check_classes(net, info.classes, num_classes)
        r, batches, extra = task.validate(net, info, num_classes, d, batch_size=batch_size, img_size=img_size,
                                          crop_pct=crop_pct, amp=amp, limit=limit, workers=workers, flip=flip,
                                          scales=scales)
        check_evaluated(r, batches)
        return {**r.as_dict(saved_class_names(net, num_classes)), "skipped_images": batches.num_skipped, **extra,
                "task": task.name, "model": net.pretrained_cfg["architecture"],
                "checkpoint": "official weights" if checkpoint is None else str(resolve_weights(checkpoint))}
    finally:
        cleanup_distributed()


@torch.no_grad()
def iter_predictions(images: list[str | os.PathLike], checkpoint: str | os.PathLike, model: str | None = None, *,
                     topk: int = 5, device: str = "cpu", batch_size: int = 64, img_size: int | None = None,
                     crop_pct: float | None = None, output_dir: str | os.PathLike | None = None,
                     overwrite: bool = False) -> Iterator[dict]:
    """For each image file, in order: {"image", "top": [(class name, probability), ...]} with the `topk` most
    likely classes. Images are decoded and run `batch_size` at a time, so any number fits in memory.

    A segmentation checkpoint writes a colour mask and an overlay PNG per image into `output_dir` instead and
    yields {"image", "mask", "overlay", "size", "classes": {class: share of pixels}} (see tasks/seg_evaluate.py),
    one image at a time at its own size (`img_size`: its short side resized to that); existing files there are
    refused unless `overwrite`, and an output that is an input image always."""
    if topk < 1 or batch_size < 1:
        raise ValueError(f"topk {topk} and batch_size {batch_size} must be positive; pass --topk 5 -b 64 e.g.")
    net = load_model(checkpoint, model, device=device)
    names = saved_class_names(net, classes_and_channels(net)[0])
    yield from task_of(net).predict(net, images, names, topk=topk, batch_size=batch_size, img_size=img_size,
                                    crop_pct=crop_pct, output_dir=output_dir, overwrite=overwrite)


def predict(images: list[str | os.PathLike], checkpoint: str | os.PathLike, model: str | None = None,
            topk: int = 5, device: str = "cpu", **kw) -> list[dict]:
    """:func:`iter_predictions` as a list."""
    return list(iter_predictions(images, checkpoint, model, topk=topk, device=device, **kw))
