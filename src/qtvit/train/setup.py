"""Setting a run up: the model from its name, the data (opened once, as the task reads it: classification or
segmentation), the task, the optimiser and its companions, and the run folder. ``setup_run`` returns them in one
``Run`` that the loop (engine.py) reads.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import latest_checkpoint
from ..data import DataConfig, DatasetInfo, Shard, resolve_data_config
from ..models import create_model, set_pretrained_cfg
from ..tasks import TASKS, Task, get_task
from .distributed import DistInfo, broadcast_object
from .ema import ModelEma
from .optim import create_optimizer
from .recipes import MAX_IMG_SIZE, TrainConfig, check_config

__all__ = ["Run", "setup_run", "class_names", "build_model", "run_dir_of", "resumed_run_dir"]


def build_model(name: str, num_classes: int, in_chans: int, drop_path: float = 0.0, /, **kwargs) -> nn.Module:
    """``qtvit.create_model`` with the class count and channels of the data. Constructor arguments that the model
    does not take, or image sizes no machine could hold, are a ValueError naming the argument."""
    for k, flag in (("num_classes", "--num-classes N"), ("in_chans", "the data (its images' channels)")):
        if k in kwargs:
            raise ValueError(f"--model-kwargs {k}={kwargs[k]}: the run sets {k} from {flag}; remove it from "
                             "--model-kwargs")
    for k, v in kwargs.items():  # a size of 100000 would try to allocate hundreds of gigabytes
        sides = v if isinstance(v, (list, tuple)) else [v]
        if k.endswith("size") and any(isinstance(s, int) and not 1 <= s <= MAX_IMG_SIZE for s in sides):
            raise ValueError(f"--model-kwargs {k}={v} is not a plausible image size; give sides in "
                             f"[1, {MAX_IMG_SIZE}]")
    given = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in kwargs.items())
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    try:
        return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError, KeyError) as e:
        bad = [k for k in kwargs if repr(k) in str(e) or f" {k}" in str(e)]
        if isinstance(e, TypeError) and bad and "argument" in str(e):
            raise ValueError(f"model {name!r} takes no constructor argument {bad[0]!r} ({e}); remove it from "
                             "--model-kwargs or check its spelling") from e
        if not given:
            raise
        if isinstance(e, ValueError):  # the model's own check: it names the argument and the fix
            raise ValueError(f"model {name!r}, --model-kwargs {given}: {e}") from e
        # a value of the wrong kind (strides=null, a negative width) fails deep in the constructor
        raise ValueError(f"model {name!r} cannot be built with --model-kwargs {given}: {type(e).__name__}: {e}; "
                         "give each argument a value of its default's kind (leave it out for the default)") from e


def resumed_run_dir(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) of a --resume value: a run folder (its latest checkpoint) or a checkpoint
    folder inside one. The one place that knows how a run folder is laid out for resuming."""
    p = Path(path).expanduser()
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        raise FileNotFoundError(f"--resume {path}: no checkpoint there; pass the run folder that `qtvit train` "
                                "printed (it holds checkpoints/latest) or one of its checkpoints/step_* folders")
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else p), ckpt


def run_dir_of(cfg: TrainConfig) -> Path:
    """The run folder: the one being resumed, or <output>/<name> (default name: <model>-<recipe>-<time>)."""
    if cfg.resume:
        return resumed_run_dir(cfg.resume)[0]
    name = cfg.name or f"{cfg.model}-{cfg.recipe or 'custom'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output).expanduser() / name


def class_names(info, num_classes: int) -> list[str]:
    """The dataset's class names, numbered past its own up to `num_classes` (--num-classes may add classes)."""
    return list(info.classes) + [str(i) for i in range(len(info.classes), num_classes)]


@dataclass
class Run:
    """What a run is made of; built once by setup_run, read by every part of the loop."""
    cfg: TrainConfig
    dist: DistInfo
    info: DatasetInfo                 # the dataset description (a SegDatasetInfo for segmentation)
    data_cfg: DataConfig
    num_classes: int
    model: nn.Module          # the model itself; train_model is what training calls: the task's view of it
                              # (task.train_module), in its DDP wrapper in a distributed run
    train_model: nn.Module
    task: Task
    train_batches: object
    eval_batches: object
    bn_batches: object | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    aug_gen: torch.Generator  # mixup/cutmix draws; per process
    lr: float
    total_steps: int
    warmup_steps: int
    run_dir: Path
    log: Callable
    drop_paths: list = field(default_factory=list)   # (module, base rate) of every drop-path layer
    step_losses: list = field(default_factory=list)  # (global step, loss) of this process's steps, for the summary
    saved_step: int = -1                             # the global step of the last checkpoint written
    args_written: bool = False                       # args.json, written with this invocation's first checkpoint
    norm_stats: list = field(default_factory=list)   # BatchNorm running statistics, restored after a skipped step
    norm_saved: list = field(default_factory=list)   # ... from this copy, taken before each step's forward
    callbacks: list = field(default_factory=list)    # engine.Callback objects whose hooks the loop calls

    def __post_init__(self):
        self.norm_stats = [t for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                           and m.track_running_stats for t in (m.running_mean, m.running_var, m.num_batches_tracked)
                           if t is not None]
        self.norm_saved = [t.clone() for t in self.norm_stats]

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def class_names(self) -> list[str]:  # per_class.csv and summary.json name the classes as the dataset does
        return class_names(self.info, self.num_classes)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)


def _model_and_data(cfg: TrainConfig, info: DatasetInfo, log: Callable):
    task_cls = get_task(cfg.task)
    num_classes = cfg.num_classes or len(info.classes)
    if num_classes < len(info.classes):
        raise ValueError(f"--num-classes {num_classes} is below the dataset's {len(info.classes)} classes; leave it "
                         "out to use the dataset's")
    # Fine-tuning: the starting weights (a classifier of another class count is dropped, said in one line); a resumed
    # run takes its own weights from its checkpoint instead.
    start = {} if cfg.resume else dict(pretrained=cfg.pretrained, checkpoint_path=cfg.initial_checkpoint)
    model = build_model(cfg.model, num_classes, info.in_chans, cfg.drop_path, **start, **cfg.model_kwargs)
    if start.get("pretrained") or start.get("checkpoint_path"):
        log(f"fine-tuning {cfg.model} from {'its official weights' if cfg.pretrained else cfg.initial_checkpoint}")
    declared = model.pretrained_cfg.get("task")  # set by the detection and segmentation models themselves
    if declared is not None and declared != cfg.task and declared in TASKS:
        raise ValueError(f"{cfg.model} is a {declared} model; train it with --task {declared}, or pick a {cfg.task} "
                         "model")
    data_cfg = resolve_data_config(model, info.in_chans, cfg.img_size, cfg.crop_pct, dataset_mean=info.mean,
                                   dataset_std=info.std)
    # The positional embedding is stored for one size; another data size resizes it at every step.
    # (a detector's backbone keeps its own: the first module that says what size it stores)
    owner = next((m.pos_embed_size for m in model.modules() if isinstance(getattr(m, "pos_embed_size", None), int)),
                 None)
    stored = owner or getattr(model, "model_args", {}).get("pos_embed_size") or model.pretrained_cfg.get("input_size")
    stored = stored[-1] if isinstance(stored, (tuple, list)) else stored
    has_pos_embed = any(n.endswith("pos_embed") for n, _ in model.named_parameters())
    if has_pos_embed and stored and stored != data_cfg.input_size[-1]:
        fix = "" if not task_cls.resizes_pos_embed else (
            f"; store it at that size with --model-kwargs pos_embed_size={data_cfg.input_size[-1]}")
        log(f"note: {cfg.model}'s positional embedding is stored for {stored} px and resized to the "
            f"{data_cfg.input_size[-1]} px images at every step{fix}")
    # The saved weights carry the preprocessing and the labels: the file alone rebuilds the model and its input.
    labels = class_names(info, num_classes)
    set_pretrained_cfg(model, {**model.pretrained_cfg, "input_size": list(data_cfg.input_size),
                               "crop_pct": data_cfg.crop_pct, "interpolation": data_cfg.interpolation,
                               "mean": list(data_cfg.mean), "std": list(data_cfg.std), "num_classes": num_classes,
                               "label_names": labels, "dataset": info.kind, "recipe": cfg.recipe, "task": cfg.task,
                               **task_cls.recorded(cfg, info)},
                       model.pretrained_cfg.get("architecture", cfg.model))
    return model, data_cfg, num_classes


def setup_run(cfg: TrainConfig, d: DistInfo) -> Run:
    """Check the options, then build everything a run needs: threads and seeds, data, model, task, optimiser,
    gradient scaler, EMA, and the run folder's path (rank 0's, which holds its time of day)."""
    check_config(cfg)
    device = d.device
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.local_world))
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)
    log = print if d.is_main else (lambda *a, **k: None)
    # Seeds: the same model init on every rank (DDP also broadcasts it), then per-rank streams for dropout/aug.
    torch.manual_seed(cfg.seed)
    task_cls = get_task(cfg.task)
    info = task_cls.open_data(cfg.data, cfg.num_classes)
    model, data_cfg, num_classes = _model_and_data(cfg, info, log)
    shard = Shard(cfg.seed, d.rank, d.world, cfg.workers)
    train, evals, bn = task_cls.batches(cfg, info, data_cfg, shard)
    if cfg.warmup_epochs >= cfg.epochs:
        log(f"note: --warmup-epochs {cfg.warmup_epochs} covers all {cfg.epochs} epochs: the learning rate only rises "
            f"and never reaches its decay; lower --warmup-epochs or raise --epochs")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and d.enabled:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on CPU); leave it out")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    lr = cfg.lr * (d.world if cfg.scale_lr_by_world else 1)
    optimizer = create_optimizer(model, lr, cfg.weight_decay, cfg.betas, cfg.opt_eps, cfg.fused_optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = ModelEma(model, cfg.model_ema_decay, cfg.model_ema_warmup_steps) if cfg.model_ema else None
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + d.rank)
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed((cfg.seed + d.rank) % 2**32)
    random.seed(cfg.seed + d.rank)
    task = task_cls(num_classes, data_cfg, cfg, info)
    train_model = task.train_module(model)
    if d.enabled:
        train_model = nn.parallel.DistributedDataParallel(train_model,
                                                          device_ids=[device] if device.type == "cuda" else None)
    return Run(cfg=cfg, dist=d, info=info, data_cfg=data_cfg, num_classes=num_classes, model=model,
               train_model=train_model, task=task, train_batches=train,
               eval_batches=evals, bn_batches=bn, optimizer=optimizer, scaler=scaler, ema=ema, aug_gen=aug_gen, lr=lr,
               total_steps=cfg.epochs * len(train), warmup_steps=round(cfg.warmup_epochs * len(train)),
               run_dir=Path(broadcast_object(str(run_dir_of(cfg)))), log=log,
               drop_paths=[(m, float(m.drop_prob)) for m in model.modules()
                           if isinstance(getattr(m, "drop_prob", None), float)])
