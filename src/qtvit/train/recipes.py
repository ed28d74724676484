"""The official recipes as presets of the training options (declared in train/config.py), and their checks.

``make_config(recipe, **overrides)``: the dataclass defaults, then the recipe's values, then explicit overrides.
Learning rates are for the whole run as given; with ``scale_lr_by_world`` (the official EfficientViT rule,
init_lr = base_lr x number of processes) the loop multiplies `lr` by the number of processes.
"""
from __future__ import annotations

import copy
import dataclasses

from ..options import MAX_IMG_SIZE, Bound, OptionError, check_field, check_options
from ..tasks import get_task
from .config import SCHEDULES, TASKS, TrainConfig

__all__ = ["TASKS", "SCHEDULES", "TrainConfig", "RECIPES", "make_config", "list_recipes", "check_config", "check_value",
           "check_run_name", "BOUNDS", "MAX_IMG_SIZE", "Bound", "OptionError"]


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
    # The main job: qtvit_pico with its first stage at 14x14 and no augmentation (it underfits at this budget);
    # the measurements behind each choice: docs/recipes.md.
    "fashion-mnist": dict(model="qtvit_pico", model_kwargs=dict(strides=(2, 1, 2, 1, 2)), epochs=8,
                          warmup_epochs=0.5, batch_size=128, lr=3e-3, weight_decay=0.05, smoothing=0.1, padding=0,
                          hflip=False, eval_batch_size=500,
                          channels_last=True,  # faster convolutions on CPU (oneDNN): docs/recipes.md
                          fused_optimizer=True),
    # Segmentation of the embedded scenes with QT-ViT-1's segmentation model, whole scenes at 192 px, busier training
    # scenes, OHEM and an auxiliary head; the measurements behind each choice: docs/recipes.md.
    "seg-scenes": dict(task="segmentation", model="qtvit_seg_1_ade20k", epochs=3, warmup_epochs=0.1, batch_size=8,
                       eval_batch_size=16, lr=2e-3, min_lr=0.0, weight_decay=0.01, schedule="poly", img_size=192,
                       scale_range=(0.75, 0.75), eval_size=192, limit_train=6000, limit_eval=200, hflip=True,
                       aux_weight=0.4, channels_last=True, eval_every_epochs=3, seg_jitter=False,
                       scene_items=(12, 20), ohem=0.7, model_kwargs=dict(aux_channels=64), fused_optimizer=True),
    # Detection and instance segmentation of the embedded scenes' instances with Mask R-CNN on QT-ViT-1 from scratch:
    # the scenes at their own 256 px (no random resize), anchors 16-256 for the 14-112 px garments, a light neck and
    # heads, fewer sampled RoIs and one RoIAlign sample per bin side, bf16 autocast and the fused AdamW for
    # throughput, one pass over 7 100 scenes (the detection job, under 20 min on 2 cores); the measurements behind
    # each choice: docs/detection.md. COCO's standard (mmdet 1x) is another setting: 800 x 1333, 12 epochs.
    "det-scenes": dict(task="detection", model="maskrcnn_qtvit_1", epochs=1, warmup_epochs=0.05, batch_size=4,
                       eval_batch_size=8, lr=1e-3, min_lr=0.0, weight_decay=0.05, schedule="cosine", img_size=256,
                       scale_range=(1.0, 1.0), hflip=True, limit_train=7100, limit_eval=50, channels_last=True,
                       amp="bf16", fused_optimizer=True,
                       model_kwargs=dict(min_size=256, max_size=256, fpn_channels=64, box_head_dim=512,
                                         mask_head_channels=64, mask_head_layers=2, box_batch_size_per_image=128,
                                         rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                                         roi_sampling_ratio=1,
                                         anchor_sizes=(16, 32, 64, 128, 256))),
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
# Read from the declarations (train/config.py): every numeric option's bound.
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
BOUNDS: dict[str, Bound] = {k: f.metadata["bound"] for k, f in _FIELDS.items() if f.metadata["bound"] is not None}


def check_value(name: str, value) -> None:
    """An OptionError naming the option `name` and what it accepts when `value` is outside its declaration (None:
    unset, always fine); pairs (betas, rrc_scale, scale_range, scene_items) are checked element-wise."""
    if name in _FIELDS:
        check_field(_FIELDS[name], value)


def check_run_name(name: str | None) -> None:
    """A run name must be one folder name: it may not climb out of `output` or into a sub-folder."""
    check_value("name", name)


def check_config(cfg: TrainConfig) -> None:
    """Every option of `cfg` within its declaration (train/config.py), and the options consistent with each other:
    an OptionError (a ValueError) that names the fields and says what to pass."""
    check_options(cfg)
    if cfg.rrc_scale[0] > cfg.rrc_scale[1]:
        raise OptionError("rrc_scale", f"{cfg.rrc_scale[0]} {cfg.rrc_scale[1]}: give the smaller area first")
    if cfg.scale_range[0] > cfg.scale_range[1]:
        raise OptionError("scale_range", f"{cfg.scale_range[0]} {cfg.scale_range[1]}: give the smaller ratio first")
    if cfg.scene_items[0] > cfg.scene_items[1] or any(int(n) != n for n in cfg.scene_items):
        raise OptionError("scene_items", f"{cfg.scene_items[0]} {cfg.scene_items[1]}: give two whole numbers, the "
                          "smaller first")
    get_task(cfg.task).check_config(cfg)  # the task's own options
    if not isinstance(cfg.model_kwargs, dict):
        raise OptionError("model_kwargs", f"must be a dict of constructor arguments, got {cfg.model_kwargs!r}")
    if cfg.pretrained and cfg.initial_checkpoint:
        raise OptionError(("pretrained", "initial_checkpoint"), "both name the starting weights: give one of them")
