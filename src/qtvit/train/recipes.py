"""Training options (one dataclass) and the official recipes as presets.

``make_config(recipe, **overrides)``: the dataclass defaults, then the recipe's values, then explicit overrides.
Learning rates are for the whole run as given; with ``scale_lr_by_world`` (the official EfficientViT rule,
init_lr = base_lr x number of processes) the loop multiplies `lr` by the number of processes.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from ..tasks import TASKS as _TASK_CLASSES, get_task

__all__ = ["TASKS", "SCHEDULES", "TrainConfig", "RECIPES", "make_config", "list_recipes", "check_config", "check_value",
           "check_run_name", "BOUNDS", "BOUND_HINTS", "MAX_IMG_SIZE"]

TASKS = tuple(_TASK_CLASSES)  # the names --task accepts
SCHEDULES = ("cosine", "poly")


@dataclass
class TrainConfig:
    # what
    task: str = "classification"       # or "segmentation" (per-pixel labels; see qtvit/tasks/)
    model: str = "qtvit_nano"
    data: str | None = None            # None / "fashion-mnist", a folder of idx files, or an ImageNet-style folder
    output: str = "runs"
    name: str | None = None            # run folder name under `output` (default: <model>-<recipe>-<time>)
    num_classes: int | None = None     # default: the dataset's
    img_size: int | None = None        # default: the model's pretrained_cfg input size (segmentation: the crop)
    crop_pct: float | None = None      # eval crop ratio; default: the model's
    # schedule and optimiser
    epochs: int = 10                   # total epochs, warm-up included (official: n_epochs + warmup_epochs)
    warmup_epochs: float = 1.0
    schedule: str = "cosine"           # after the warm-up: "cosine" to min_lr, or "poly" (power 0.9, mmseg's)
    batch_size: int = 128              # per process
    eval_batch_size: int = 256
    lr: float = 1e-3
    scale_lr_by_world: bool = False
    min_lr: float = 0.0
    warmup_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    clip_grad: float | None = None     # max gradient norm; None = no clipping
    fused_optimizer: bool = False      # torch's fused AdamW kernel: one pass over all parameters (same maths,
                                       # other rounding; 5.4 -> 1.1 ms a step for qtvit_pico on one CPU core)
    # loss and regularisation
    smoothing: float = 0.1
    aux_weight: float = 0.4            # segmentation: weight of the auxiliary head's loss (UperNet's FCN head)
    ohem: float = 0.0                  # segmentation: average the loss over the hard pixels only, those whose own
                                       # class has probability below this (mmseg's OHEM; 0.7 there), at least 1/16
                                       # of the labelled pixels; 0 = every labelled pixel
    scale_range: tuple[float, float] = (0.5, 2.0)  # segmentation: random rescale ratio before the crop (mmseg's)
    scene_items: tuple[int, int] = (3, 7)  # segmentation on the embedded scenes: fewest and most items per training
                                           # scene (the test scenes keep the generator's 3-7)
    eval_size: int | None = None       # segmentation: evaluate with the images' short side resized to this (labels
                                       # keep their size); default: the dataset's protocol
    bce: bool = False                  # BCE-with-logits on the (smoothed, mixed) targets instead of cross-entropy
    mixup: float = 0.0                 # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float = 0.0
    randaug_n: int = 0                 # RandAugment ops per image (kornia); 0 = off
    randaug_m: int = 0
    reprob: float = 0.0                # random erasing probability
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    padding: int = 2                   # Fashion-MNIST random-crop padding
    hflip: bool = True
    drop_path: float = 0.0
    drop_path_schedule: str = "constant"  # or "linear": scaled by training progress (official EfficientViT)
    # EMA and BN
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup_steps: int = 4000
    bn_reestimate_images: int = 0      # re-estimate BN statistics on this many training images before eval
    bn_reestimate_batch: int = 100
    # numerics and speed
    amp: str = "none"                  # none | bf16 | fp16 (the attention core keeps fp32 itself)
    channels_last: bool = False
    sync_bn: bool = False              # SyncBatchNorm in distributed runs (CUDA only)
    device: str = "auto"
    threads: int | None = None         # torch threads per process (default: cores / processes on this node)
    workers: int = 4                   # loader workers (image folders)
    seed: int = 0
    # checkpoints and logging
    checkpoint_every_steps: int = 0    # 0: at the end of every epoch only
    keep_checkpoints: int = 1
    resume: str | None = None          # a run folder or checkpoint folder
    eval_every_epochs: int = 1
    limit_train: int | None = None     # use only the first N training / eval images (quick runs, tests)
    limit_eval: int | None = None
    max_steps: int | None = None       # stop after this many steps (smoke runs; the schedule still uses `epochs`)
    progress: bool = True
    recipe: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False           # fine-tune: start from the model's official weights (timm's --pretrained)
    initial_checkpoint: str | None = None  # fine-tune: start from these weights (any format create_model reads)
    seg_jitter: bool = True            # segmentation: photometric jitter of the training images (off: the scenes'
                                       # colours are already random, and the test scenes come from the same renderer)


# The official recipes (SPEC C.6, E.6). Per-process batch 128 as in the official code; lr per process, scaled.
_EFFICIENTVIT_B = dict(
    epochs=320, warmup_epochs=20, batch_size=128, lr=2.5e-4, scale_lr_by_world=True, weight_decay=0.1,
    clip_grad=2.0, smoothing=0.1, bce=True, mixup=0.1, cutmix=0.1, randaug_n=1, randaug_m=3, drop_path=0.05,
    drop_path_schedule="linear", model_ema=True, model_ema_decay=0.9998, model_ema_warmup_steps=2000,
    bn_reestimate_images=16000, bn_reestimate_batch=100, amp="fp16", img_size=224,
)
RECIPES: dict[str, dict] = {
    # QT-ViT-1..3 (B backbones): as EfficientViT-B with EMA warm-up 4000 steps. crop_pct comes from the model
    # (0.95 for QT-ViT-1 / B1, 1.0 for the others).
    "qtvit-b": {**_EFFICIENTVIT_B, "model": "qtvit_1", "model_ema_warmup_steps": 4000},
    # QT-ViT-4..6 (L backbones); MESA self-distillation is not implemented.
    "qtvit-l": {**_EFFICIENTVIT_B, "model": "qtvit_4", "lr": 1.5e-4, "mixup": 0.2, "cutmix": 0.2, "randaug_n": 2,
                "randaug_m": 5, "reprob": 0.2, "drop_path": 0.1, "model_ema_warmup_steps": 4000},
    "efficientvit-b": {**_EFFICIENTVIT_B, "model": "efficientvit_b1"},
    "efficientvit-l": {**_EFFICIENTVIT_B, "model": "efficientvit_l1", "lr": 1.5e-4, "mixup": 0.2, "cutmix": 0.2,
                       "randaug_n": 2, "randaug_m": 5, "reprob": 0.2, "drop_path": 0.1},
    # L2ViT from scratch (E.6): global batch 4096 = 128 x 8 x update_freq 4; without gradient accumulation use
    # 32 processes x 128 or lower lr linearly (lr 4e-3 is for batch 4096).
    "l2vit": dict(model="l2vit_base", epochs=300, warmup_epochs=20, batch_size=128, lr=4e-3, min_lr=1e-6,
                  weight_decay=0.05, smoothing=0.1, mixup=0.8, cutmix=1.0, randaug_n=2, randaug_m=9, reprob=0.25,
                  drop_path=0.3, model_ema=True, model_ema_decay=0.9999, model_ema_warmup_steps=0, img_size=224),
    # The main job: a small QT-ViT on Fashion-MNIST on 2 CPU cores. qtvit_pico with its first stage at 14x14
    # (strides 2, 1, 2, 1, 2: the stem, stage 2 and stage 4 downsample; QT attention at 7x7 and 4x4) and no
    # augmentation: at this budget the model underfits (with crop + flip it scored 91.4 % top-1 on the training
    # images and 90.7 % on the test set), so augmentation only slowed its learning. Test top-1 after 8 epochs in
    # scripts/main_job.sh's set-up (2 processes x 1 thread x batch 64, one run each): crop + flip with stage 1 at 7x7
    # (the recipe before) 90.72 %, crop + flip at 14x14 91.25, no augmentation at 7x7 91.53, this recipe 92.41
    # (docs/training.md, "The main job"). The 14x14 stage costs ~10 % more time per step.
    "fashion-mnist": dict(model="qtvit_pico", model_kwargs=dict(strides=(2, 1, 2, 1, 2)), epochs=8,
                          warmup_epochs=0.5, batch_size=128, lr=3e-3, weight_decay=0.05, smoothing=0.1, padding=0,
                          hflip=False, eval_batch_size=500,
                          channels_last=True,  # ~1.6x faster convolutions on CPU (oneDNN)
                          fused_optimizer=True),
    # Segmentation of the embedded Fashion-MNIST scenes (11 classes, 256 x 256 canvases; data/scenes.py) with
    # QT-ViT-1's segmentation model: the model sees each whole scene at 0.75 resolution (192 px, no crop; evaluation
    # at 192, the metric at full 256 x 256), training scenes of 12-20 items (the test scenes keep 3-7: more
    # labelled garment pixels per scene), 6000 of them x 3 epochs, batch 8, fused AdamW with a short warm-up and poly
    # decay, the loss over the hard pixels (OHEM 0.7), no photometric jitter (the scenes' colours are already
    # random), an auxiliary FCN head on the stride-16 features (weight 0.4; another model keeps it with
    # --model-kwargs aux_channels=64). Measured (docs/segmentation.md): 47.2 % test mIoU with 3-7 items and
    # no OHEM, 51.3 with 9-15, 52.7 with 12-20, 52.6 with 9-15 and OHEM, 53.1 with both, 54.1 with the auxiliary
    # head (2 epochs x 6500, one thread each); scripts/seg_job.sh (this recipe, two 1-thread processes): 55.9
    # single-scale, 60.2 with the multi-scale flip test.
    "seg-scenes": dict(task="segmentation", model="qtvit_seg_1_ade20k", epochs=3, warmup_epochs=0.1, batch_size=8,
                       eval_batch_size=16, lr=2e-3, min_lr=0.0, weight_decay=0.01, schedule="poly", img_size=192,
                       scale_range=(0.75, 0.75), eval_size=192, limit_train=6000, limit_eval=200, hflip=True,
                       aux_weight=0.4, channels_last=True, eval_every_epochs=3, seg_jitter=False,
                       scene_items=(12, 20), ohem=0.7, model_kwargs=dict(aux_channels=64), fused_optimizer=True),
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def make_config(recipe: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig: defaults < `recipe` preset < `overrides` (keys are TrainConfig fields)."""
    values: dict = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(list_recipes())}")
        values.update(copy.deepcopy(RECIPES[recipe]))
        if overrides.get("model", values.get("model")) != values.get("model") and "model_kwargs" not in overrides:
            values.pop("model_kwargs", None)  # the recipe's model arguments belong to its own model
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; see `qtvit train --help`")
    values.update(overrides)
    values["recipe"] = recipe
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------- checks
# The largest image side accepted anywhere (data size, positional-embedding size): far above any real use, and
# small enough that a typo (100000) is refused instead of trying to allocate hundreds of gigabytes.
MAX_IMG_SIZE = 4096


class Bound(NamedTuple):
    """The values an option accepts: lo..hi, each end open or closed, None for no limit."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        # NaN and infinities are never meant: an infinite learning rate trains NaN weights without an error
        return math.isfinite(v) and ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def describe(self) -> str:
        def num(v: float) -> str:  # whole numbers in full (a seed's 4294967295, not 4.29497e+09)
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {num(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


_POSITIVE, _NONNEG, _FRACTION = Bound(1), Bound(0), Bound(0, 1)
# Loader workers and torch threads beyond the machine's CPUs only slow it down; a huge number forks until killed.
# At least 4, the default, so the defaults hold on any machine.
MAX_WORKERS = max(4, os.cpu_count() or 1)
_TYPO = 10.0
# One table for the library (check_config) and the command line (its argparse types): every numeric option.
BOUNDS: dict[str, Bound] = {
    "num_classes": Bound(1, 1_000_000), "img_size": Bound(8, MAX_IMG_SIZE), "crop_pct": Bound(0, 1, lo_open=True),
    "epochs": _POSITIVE, "warmup_epochs": Bound(0, 1e6), "batch_size": _POSITIVE, "eval_batch_size": _POSITIVE,
    # learning rates past 10 (AdamW's are below 1) and the like are typos, and overflow the optimiser's float32
    "lr": Bound(0, _TYPO, lo_open=True), "min_lr": Bound(0, _TYPO), "warmup_lr": Bound(0, _TYPO),
    "weight_decay": Bound(0, 1000), "opt_eps": Bound(0, 1, lo_open=True), "clip_grad": Bound(0, lo_open=True),
    "smoothing": Bound(0, 1, hi_open=True),
    "mixup": _NONNEG, "cutmix": _NONNEG, "randaug_n": Bound(0, 16), "randaug_m": Bound(0, 30), "reprob": _FRACTION,
    "padding": Bound(0, 64), "drop_path": Bound(0, 1, hi_open=True), "model_ema_decay": _FRACTION,
    "model_ema_warmup_steps": _NONNEG, "bn_reestimate_images": _NONNEG, "bn_reestimate_batch": _POSITIVE,
    "threads": Bound(1, MAX_WORKERS), "workers": Bound(0, MAX_WORKERS), "seed": Bound(0, 2**32 - 1),
    "checkpoint_every_steps": _NONNEG,
    "keep_checkpoints": _POSITIVE, "eval_every_epochs": _POSITIVE, "limit_train": _POSITIVE,
    "limit_eval": _POSITIVE, "max_steps": _POSITIVE, "betas": Bound(0, 1, hi_open=True),
    "rrc_scale": Bound(0, 1, lo_open=True), "aux_weight": _NONNEG, "ohem": Bound(0, 1),
    "scale_range": Bound(0, 8, lo_open=True), "eval_size": Bound(8, 8192), "scene_items": Bound(2, 64),
}
BOUND_HINTS = {"limit_train": "; leave it out to use all images", "limit_eval": "; leave it out to use all images",
          "crop_pct": " (the fraction of the resized image kept by the centre crop)",
          "img_size": " (pixels; sizes beyond that cannot be meant)",
          "workers": f" (this machine has {os.cpu_count()} CPUs)",
          "threads": f" (this machine has {os.cpu_count()} CPUs)"}


def check_value(name: str, value) -> None:
    """A ValueError naming the option and what it accepts when `value` (None: unset, always fine) is out of
    BOUNDS; pairs (betas, rrc_scale, scale_range, scene_items) are checked element-wise."""
    bound = BOUNDS.get(name)
    if bound is None or value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not bound.holds(v):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} is out of range: give a value {bound.describe()}"
                             f"{BOUND_HINTS.get(name, '')}")


def check_run_name(name: str | None) -> None:
    """A run name must be one folder name: it may not climb out of --output or into a sub-folder."""
    if name is None:
        return
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ValueError(f"--name {name!r} is not a single folder name; give a plain name such as 'run1' (use "
                         "--output to choose the parent folder)")


def check_config(cfg: TrainConfig) -> None:
    """Every option of `cfg` within its bounds, and the choices valid: a ValueError that says what to pass."""
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name))
    check_run_name(cfg.name)
    if cfg.rrc_scale[0] > cfg.rrc_scale[1]:
        raise ValueError(f"--rrc-scale {cfg.rrc_scale[0]} {cfg.rrc_scale[1]}: give the smaller area first")
    if cfg.scale_range[0] > cfg.scale_range[1]:
        raise ValueError(f"--scale-range {cfg.scale_range[0]} {cfg.scale_range[1]}: give the smaller ratio first")
    if cfg.scene_items[0] > cfg.scene_items[1] or any(int(n) != n for n in cfg.scene_items):
        raise ValueError(f"--scene-items {cfg.scene_items[0]} {cfg.scene_items[1]}: give two whole numbers, the "
                         "smaller first")
    try:
        task = get_task(cfg.task)
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule {cfg.schedule!r}: use {' or '.join(SCHEDULES)}")
    task.check_config(cfg)
    if cfg.drop_path_schedule not in ("constant", "linear"):
        raise ValueError(f"--drop-path-schedule {cfg.drop_path_schedule!r}: use constant or linear")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"--amp {cfg.amp!r}: use none, bf16 or fp16")
    if not isinstance(cfg.model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a dict of constructor arguments, got {cfg.model_kwargs!r}")
    if cfg.pretrained and cfg.initial_checkpoint:
        raise ValueError("--pretrained and --initial-checkpoint both name the starting weights: give one of them")
