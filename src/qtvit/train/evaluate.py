"""Using a model on data: evaluation (top-1/top-5 and loss), BN re-estimation before it, and for a saved model
(any weights file, checkpoint folder or run folder) validation on a dataset and prediction on image files, as the
task it was trained for (classification here; segmentation's evaluation and masks in seg_evaluate.py).

A saved model describes itself: its architecture, constructor arguments and preprocessing (input size, crop,
interpolation, mean, std) and class names are in the file, so ``load_model`` needs nothing else; ``img_size`` and
``crop_pct`` override the preprocessing when asked.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._utils import progress_bar
from ..data import DataConfig, build_batches, open_image, resolve_data_config
from ..data.segmentation import build_segmentation_batches
from ..data.seg_transforms import check_scales
from ..data.transforms import EvalTransform
from ..layers.norm import reestimate_bn
from ..checkpoints import CheckpointError, model_config, read_config, resolve_weights
from ..models import create_model
from .distributed import all_reduce_mean, cleanup_distributed, resolve_device, setup_distributed
from .inputs import autocast, model_input
from .metrics import TopKAccuracy
from .recipes import TASKS
from .seg_evaluate import eval_batch_size, evaluate_segmentation, open_task_data, segment_images

__all__ = ["autocast", "model_input", "evaluate", "check_evaluated", "reestimate_bn_on", "load_model", "task_of",
           "validate", "predict",
           "iter_predictions", "eval_short_side", "segmentation_eval_batches"]


@torch.no_grad()
def evaluate(model: nn.Module, batches, data_cfg: DataConfig, device: torch.device, num_classes: int,
             amp: str = "none", channels_last: bool = False, progress: bool = False) -> dict:
    """Top-1 / top-5 (micro, percent), mean cross-entropy and image count over `batches` (all processes);
    `progress`: a bar of the batches on stderr."""
    was_training = model.training
    model.eval()
    acc = TopKAccuracy(num_classes, device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    for x, y in progress_bar(batches.iterate(0), len(batches), "evaluating", progress):
        y = y.to(device)
        with autocast(device, amp):
            logits = model(model_input(x, data_cfg, device, channels_last)).float()
        acc.update(logits, y)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    top1, top5 = acc.compute()
    n = int(sums[1])
    return {"top1": round(top1, 4), "top5": round(top5, 4), "loss": float(sums[0] / max(n, 1)), "images": n}


def check_evaluated(r: dict, batches) -> dict:
    """`r`, an evaluation's result, unless it evaluated no image: scores of nothing (0 %, or NaN) are an error."""
    if r["images"] == 0:
        skipped = getattr(batches, "num_skipped", 0)
        raise ValueError(f"no image could be evaluated: the evaluation data held {skipped} unreadable image(s) "
                         "(skipped) and nothing else; check the dataset's evaluation split")
    return r


def reestimate_bn_on(model: nn.Module, batches, data_cfg: DataConfig, device: torch.device, num_images: int,
                     epoch_id: int = 10**6) -> int:
    """``layers.norm.reestimate_bn`` on training batches, averaged over processes. The batches come in the fixed
    order of (seed, `epoch_id`), an epoch training never reaches, so the re-estimation draws no training RNG."""
    inputs = (model_input(x, data_cfg, device) for x, _ in batches.iterate(epoch_id))
    return reestimate_bn(model, inputs, num_images, reduce=all_reduce_mean)


# ----------------------------------------------------------------------------------------------- a saved model
def _classes_and_channels(net: nn.Module) -> tuple[int, int]:
    """(classes, input channels) of a loaded model: as recorded, else from one forward pass of a blank image."""
    args, pcfg = model_config(net)["model_args"], net.pretrained_cfg
    size = pcfg.get("input_size") or (3, 224, 224)
    in_chans = args.get("in_chans") or size[0]
    num_classes = args.get("num_classes") or pcfg.get("num_classes")
    if not num_classes:
        with torch.no_grad():
            dev = next(net.parameters()).device
            out = net(torch.zeros(1, in_chans, size[-2], size[-1], device=dev))
            out = out[0] if isinstance(out, (tuple, list)) else out
            num_classes = out.shape[1]  # (B, classes) or per-pixel (B, classes, h, w)
    return int(num_classes), int(in_chans)


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


def _preprocessing(net: nn.Module, img_size: int | None, crop_pct: float | None, dataset_mean=None,
                   dataset_std=None) -> DataConfig:
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct {crop_pct} is outside (0, 1]; pass a crop ratio such as 0.875 or 1")
    if img_size is not None and img_size < 1:
        raise ValueError(f"img_size {img_size} is not a positive image side; pass e.g. 224")
    return resolve_data_config(net, _classes_and_channels(net)[1], img_size, crop_pct,
                               dataset_mean=dataset_mean, dataset_std=dataset_std)


def task_of(net: nn.Module) -> str:
    """The task a saved model was trained for (recorded in its pretrained_cfg; older files: classification)."""
    task = net.pretrained_cfg.get("task") or "classification"
    if task not in TASKS:
        raise CheckpointError(f"the checkpoint was trained for task {task!r}, which this qtvit does not know "
                              f"({' or '.join(TASKS)}); update qtvit")
    return task


def _check_classes(net: nn.Module, classes: list[str], num_classes: int) -> None:
    if len(classes) > num_classes:
        raise ValueError(f"the dataset has {len(classes)} classes, the checkpoint {num_classes}; "
                         "validate on the dataset the model was trained for")
    names = net.pretrained_cfg.get("label_names")
    if names and list(names[:len(classes)]) != list(classes):
        raise ValueError(f"the dataset's classes {classes[:5]}... differ from the checkpoint's "
                         f"{list(names[:5])}...; validate on the dataset the model was trained for")


def class_names(net: nn.Module, num_classes: int) -> list[str]:
    """The saved model's class names (``label_names``), numbered past those it records."""
    names = list(net.pretrained_cfg.get("label_names") or [])
    return names + [str(i) for i in range(len(names), num_classes)]


def eval_short_side(net: nn.Module, img_size: int | None = None) -> int | None:
    """The short side a segmentation model's evaluation images are resized to: `img_size` when given, else the one
    its training evaluated at (``--eval-size``, saved with the weights), else None (the dataset's protocol)."""
    return img_size or net.pretrained_cfg.get("eval_short_side")


def segmentation_eval_batches(net: nn.Module, info, *, batch_size: int, workers: int, limit: int | None = None,
                              img_size: int | None = None, rank: int = 0, world: int = 1,
                              scales: tuple[float, ...] = (1.0,)):
    """(DataConfig, evaluation batches) of a segmentation model on the dataset `info`, as `validate` scores it: the
    saved preprocessing with the dataset's mean and std, the images resized to ``eval_short_side`` (times each of
    `scales`: one view per scale)."""
    data_cfg = _preprocessing(net, None, None, info.mean, info.std)
    batches = build_segmentation_batches(info, train=False, crop_size=data_cfg.input_size[-1], batch_size=batch_size,
                                         rank=rank, world=world, workers=workers, limit=limit,
                                         eval_short_side=eval_short_side(net, img_size), eval_scales=scales)
    return data_cfg, batches


def _no_crop_pct(crop_pct: float | None) -> None:
    if crop_pct is not None:
        raise ValueError("--crop-pct is for classification checkpoints; a segmentation model sees the whole image "
                         "(--img-size resizes its short side): leave --crop-pct out")


def validate(checkpoint: str | os.PathLike, model: str | None = None, data: str | None = None, *,
             batch_size: int | None = None, img_size: int | None = None, crop_pct: float | None = None,
             device: str = "auto", amp: str = "none", limit: int | None = None, workers: int = 4,
             flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> dict:
    """A saved model on a dataset's eval split, scored as its task does (recorded in the file): top-1 / top-5
    (micro, percent) and loss on Fashion-MNIST test by default, with the saved preprocessing (or `img_size` /
    `crop_pct`); or mIoU, mAcc, aAcc, per-class IoU / accuracy ({class: percent}) and loss on the Fashion-MNIST
    scenes by default, with the dataset's evaluation protocol (`img_size`: resize the short side to it; `flip`:
    average with the mirrored images' logits; `scales`: the multi-scale test, ratios of that size, the views'
    probabilities averaged). `batch_size`: 256 images for a classifier, 8 for segmentation unless given."""
    d = setup_distributed(device)
    try:
        net = load_model(checkpoint, model, device=d.device)
        num_classes, task = _classes_and_channels(net)[0], task_of(net)
        info = open_task_data(task, data, num_classes)
        _check_classes(net, info.classes, num_classes)
        if task == "segmentation":
            _no_crop_pct(crop_pct)
            # Segmentation batches are images and per-pixel outputs at full size: a few at a time run faster on a
            # CPU than hundreds (measured on the scenes: 8 took 19.5 s where 32 took 30.5 s, most of it the system's
            # page faults).
            data_cfg, batches = segmentation_eval_batches(net, info, batch_size=eval_batch_size(info, batch_size or 8),
                                                          workers=workers,
                                                          limit=limit, img_size=img_size, rank=d.rank, world=d.world,
                                                          scales=scales)
            r = evaluate_segmentation(net, batches, data_cfg, d.device, num_classes, amp, flip=flip,
                                      progress=d.is_main)
            names = class_names(net, num_classes)
            r.update({k: dict(zip(names, v)) for k, v in r.items() if k.startswith("per_class_")})
        else:
            if flip or tuple(scales) != (1.0,):
                raise ValueError("--flip and --scales are for segmentation checkpoints (flip and multi-scale tests of "
                                 "the label maps); leave them out for a classifier")
            data_cfg = _preprocessing(net, img_size, crop_pct, info.mean, info.std)
            batches = build_batches(info, train=False, data_cfg=data_cfg, batch_size=batch_size or 256, rank=d.rank,
                                    world=d.world, workers=workers, limit=limit)
            r = evaluate(net, batches, data_cfg, d.device, num_classes, amp, progress=d.is_main)
        check_evaluated(r, batches)
        r["skipped_images"] = batches.num_skipped
        if task == "segmentation":
            r["flip"], r["scales"] = flip, list(check_scales(scales))
        return {**r, "task": task, "model": net.pretrained_cfg["architecture"],
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
    yields {"image", "mask", "overlay", "size", "classes": {class: share of pixels}} (see seg_evaluate.py), one
    image at a time at its own size (`img_size`: its short side resized to that); existing files there are
    refused unless `overwrite`, and an output that is an input image always."""
    if topk < 1 or batch_size < 1:
        raise ValueError(f"topk {topk} and batch_size {batch_size} must be positive; pass --topk 5 -b 64 e.g.")
    net = load_model(checkpoint, model, device=device)
    dev = next(net.parameters()).device
    names = class_names(net, _classes_and_channels(net)[0])
    if task_of(net) == "segmentation":
        if output_dir is None:
            raise ValueError("a segmentation checkpoint predicts masks: pass --output-dir, the folder to write "
                             "each image's <name>_mask.png and <name>_overlay.png to")
        _no_crop_pct(crop_pct)
        yield from segment_images(net, images, output_dir, _preprocessing(net, None, None), names,
                                  eval_short_side(net, img_size), overwrite=overwrite)
        return
    if output_dir is not None:
        raise ValueError("--output-dir is for segmentation checkpoints (masks); a classification checkpoint prints "
                         "its classes: leave --output-dir out")
    data_cfg = _preprocessing(net, img_size, crop_pct)
    tf = EvalTransform(data_cfg.input_size[-1], data_cfg.crop_pct, data_cfg.interpolation)
    mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
    for lo in range(0, len(images), batch_size):
        chunk = images[lo:lo + batch_size]
        x = torch.stack([tf(open_image(p, mode)) for p in chunk])  # a bad file raises, naming it
        probs = net(model_input(x, data_cfg, dev)).float().softmax(-1)
        p, i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        for path, pp, ii in zip(chunk, p.tolist(), i.tolist()):
            yield {"image": str(path), "top": [(names[j], float(q)) for q, j in zip(pp, ii)]}


def predict(images: list[str | os.PathLike], checkpoint: str | os.PathLike, model: str | None = None,
            topk: int = 5, device: str = "cpu", **kw) -> list[dict]:
    """:func:`iter_predictions` as a list."""
    return list(iter_predictions(images, checkpoint, model, topk=topk, device=device, **kw))
