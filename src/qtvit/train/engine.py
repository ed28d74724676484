"""The training loop, evaluation, BN re-estimation, validation of a checkpoint and prediction.

Read top to bottom as one run: set up (processes, data, model, optimiser, EMA), maybe resume, then for every step:
learning rate, batch augmentation, forward under autocast, loss, backward, clip, skip non-finite steps, optimiser,
EMA, periodic checkpoint; and per epoch: evaluation, metrics file, checkpoint, best weights.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import (DatasetInfo, build_batches, mixup_cutmix, normalize, open_dataset, open_image,
                    resolve_data_config)
from ..data.transforms import BatchAugment, EvalTransform
from .checkpoint import (CheckpointError, atomic_write, latest_checkpoint, load_train_state, load_weights,
                         read_metadata, resolve_weights, save_checkpoint, save_weights)
from .distributed import DistInfo, all_reduce_mean, broadcast_object, cleanup_distributed, setup_distributed
from .ema import ModelEma
from .metrics import TopKAccuracy, peak_memory_mb, write_metrics
from .optim import create_optimizer, lr_at
from .recipes import TrainConfig

__all__ = ["train", "evaluate", "reestimate_bn", "validate", "predict", "build_model", "load_model"]


# ----------------------------------------------------------------------------------------------- building blocks
def build_model(name: str, num_classes: int, in_chans: int, drop_path: float = 0.0, **kwargs) -> nn.Module:
    """``qtvit.create_model`` with the class count and channels of the data."""
    from ..models import create_model
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _autocast(device: torch.device, amp: str):
    if amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"unknown --amp {amp!r}; use none, bf16 or fp16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "none")


def _soft_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def _loss(logits: torch.Tensor, target: torch.Tensor, bce: bool) -> torch.Tensor:
    logits = logits.float()
    if bce:
        return F.binary_cross_entropy_with_logits(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def _drop_path_modules(model: nn.Module) -> list[tuple[nn.Module, float]]:
    return [(m, float(m.drop_prob)) for m in model.modules() if isinstance(getattr(m, "drop_prob", None), float)]


def _rng_state(aug_gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "aug": aug_gen.get_state()}


def _set_rng_state(s: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    aug_gen.set_state(s["aug"])


@torch.no_grad()
def evaluate(model: nn.Module, batches, mean, std, device: torch.device, num_classes: int,
             amp: str = "none", channels_last: bool = False) -> dict:
    """Top-1 / top-5 (micro, percent), mean cross-entropy and image count over `batches` (all processes)."""
    model.eval()
    acc = TopKAccuracy(num_classes, device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in batches.iterate(0):
        x = normalize(x.to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        acc.update(logits, y)
        loss_sum += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
    top1, top5 = acc.compute()
    n = int(loss_sum[1])
    return {"top1": round(top1, 4), "top5": round(top5, 4), "loss": float(loss_sum[0] / max(n, 1)), "images": n}


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches, mean, std, device: torch.device, num_images: int,
                  epoch_id: int = 10**6) -> int:
    """Recompute every BatchNorm's running statistics as the plain average over `num_images` training images
    (momentum None), in train mode without gradients, as the official ``reset_bn``; averaged over processes.
    Draws its batches from a fixed (seed, `epoch_id`) order, so it uses no training RNG. Returns images used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_images <= 0:
        return 0
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    for x, _ in batches.iterate(epoch_id):
        model(normalize(x.to(device), mean, std))
        seen += len(x)
        if seen >= num_images:
            break
    for m, mom in saved:
        m.momentum = mom
        if m.running_mean is not None:
            m.running_mean.copy_(all_reduce_mean(m.running_mean))
            m.running_var.copy_(all_reduce_mean(m.running_var))
    model.train(was_training)
    return seen


def _metadata(cfg: TrainConfig, info: DatasetInfo, data_cfg, num_classes: int) -> dict:
    return {"model": cfg.model, "num_classes": num_classes, "in_chans": data_cfg.input_size[0],
            "img_size": data_cfg.input_size[-1], "crop_pct": data_cfg.crop_pct,
            "interpolation": data_cfg.interpolation, "mean": list(data_cfg.mean), "std": list(data_cfg.std),
            "class_names": list(info.classes), "dataset": info.kind, "recipe": cfg.recipe,
            "model_kwargs": cfg.model_kwargs}


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.resume:
        p = Path(cfg.resume).expanduser()
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise FileNotFoundError(f"--resume {p}: no checkpoint there (a run folder with checkpoints/latest, or a "
                                    "checkpoint folder with train_state.pt)")
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else p
    name = cfg.name or f"{cfg.model}-{cfg.recipe or 'custom'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output).expanduser() / name


# ----------------------------------------------------------------------------------------------- training
def train(cfg: TrainConfig) -> dict:
    """Train as `cfg` says (one process, or one of torchrun's) and return a summary: run folder, per-epoch
    history, per-step losses of this process's steps, final and best accuracy, skipped steps."""
    dist_info = setup_distributed(cfg.device)
    try:
        return _train(cfg, dist_info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, d: DistInfo) -> dict:
    device = d.device
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.local_world))
    elif cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Seeds: the same model init on every rank (DDP also broadcasts it), then per-rank streams for dropout/aug.
    torch.manual_seed(cfg.seed)
    log = print if d.is_main else (lambda *a, **k: None)

    info = open_dataset(cfg.data)
    num_classes = cfg.num_classes or len(info.classes)
    if num_classes < len(info.classes):
        raise ValueError(f"--num-classes {num_classes} is below the dataset's {len(info.classes)} classes")
    model = build_model(cfg.model, num_classes, info.in_chans, cfg.drop_path, **cfg.model_kwargs)
    data_cfg = resolve_data_config(model, info.in_chans, cfg.img_size, cfg.crop_pct, dataset_mean=info.mean,
                                   dataset_std=info.std)
    mean, std = data_cfg.mean, data_cfg.std
    train_batches = build_batches(info, True, data_cfg, cfg.batch_size, cfg.seed, d.rank, d.world, cfg.workers,
                                  cfg.padding, cfg.hflip, cfg.limit_train, tuple(cfg.rrc_scale))
    eval_batches = build_batches(info, False, data_cfg, cfg.eval_batch_size, cfg.seed, d.rank, d.world,
                                 cfg.workers, limit=cfg.limit_eval)
    bn_batches = None
    if cfg.bn_reestimate_images > 0:  # training images, training crops, in their own fixed order
        bn_batches = build_batches(info, True, data_cfg, min(cfg.bn_reestimate_batch, train_batches.num_samples),
                                   cfg.seed, d.rank, d.world, cfg.workers, cfg.padding, cfg.hflip, cfg.limit_train,
                                   tuple(cfg.rrc_scale))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and d.enabled:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on CPU); leave it out")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    lr = cfg.lr * (d.world if cfg.scale_lr_by_world else 1)
    optimizer = create_optimizer(model, lr, cfg.weight_decay, cfg.betas, cfg.opt_eps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = ModelEma(model, cfg.model_ema_decay, cfg.model_ema_warmup_steps) if cfg.model_ema else None
    augment = BatchAugment(mean, std, cfg.randaug_n, cfg.randaug_m, cfg.reprob)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + d.rank)
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed((cfg.seed + d.rank) % 2**32)
    random.seed(cfg.seed + d.rank)

    steps_per_epoch = len(train_batches)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    drop_paths = _drop_path_modules(model)
    run_dir = Path(broadcast_object(str(_run_dir(cfg))))  # rank 0's name (it holds the time of day)
    meta = _metadata(cfg, info, data_cfg, num_classes)

    # ---- state, maybe resumed
    epoch, start_step, global_step, skipped_steps = 0, 0, 0, 0
    history: list[dict] = []
    best = {"top1": -1.0, "epoch": -1, "which": ""}
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        try:
            load_weights(model, ckpt / "model.safetensors", cfg.model)
        except CheckpointError as e:
            raise CheckpointError(f"--resume {ckpt}: {e}") from e
        st = load_train_state(ckpt)
        if st["global_batch"] != cfg.batch_size * d.world or st["seed"] != cfg.seed:
            raise ValueError(f"--resume {ckpt}: the run used global batch {st['global_batch']} and seed {st['seed']}; "
                             f"now {cfg.batch_size * d.world} and {cfg.seed}. Resume with the same --batch-size x "
                             "processes and --seed")
        optimizer.load_state_dict(st["optimizer"])
        scaler.load_state_dict(st["scaler"])
        if ema is not None:
            if not (ckpt / "ema.safetensors").is_file():
                raise CheckpointError(f"--resume {ckpt}: the run had no EMA; leave --model-ema out")
            from safetensors.torch import load_file
            ema.module.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        epoch, start_step, global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        skipped_steps, history, best = st["skipped_steps"], st["history"], st["best"]
        rngs = st["rng"]
        _set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0], aug_gen)
        log(f"resumed {ckpt} at epoch {epoch} step {start_step} (global step {global_step})")
    if d.is_main:
        if not cfg.resume and latest_checkpoint(run_dir) is not None:
            raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another "
                             "--name or --output")
        run_dir.mkdir(parents=True, exist_ok=True)
        args = {**dataclasses.asdict(cfg), "world_size": d.world, "data_config": dataclasses.asdict(data_cfg)}
        atomic_write(run_dir / "args.json", lambda t: Path(t).write_text(json.dumps(args, indent=2, default=str)))

    train_model = model
    if d.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def checkpoint(epoch_: int, step_in_epoch: int) -> None:
        rngs = [_rng_state(aug_gen)]
        if d.enabled:
            gathered = [None] * d.world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if d.is_main:
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
                     "step_in_epoch": step_in_epoch, "global_step": global_step, "skipped_steps": skipped_steps,
                     "history": history, "best": best, "rng": rngs, "seed": cfg.seed,
                     "global_batch": cfg.batch_size * d.world, "config": dataclasses.asdict(cfg)}
            save_checkpoint(run_dir, global_step, model, state, meta, ema.module if ema else None,
                            keep=cfg.keep_checkpoints)
        if d.enabled:
            torch.distributed.barrier()

    step_losses: list[tuple[int, float]] = []
    log(f"run {run_dir}: {cfg.model} on {info.kind} ({train_batches.num_samples} train / {eval_batches.num_samples} "
        f"eval images, {num_classes} classes, {data_cfg.input_size[-1]} px), {cfg.epochs} epochs x {steps_per_epoch} "
        f"steps, global batch {cfg.batch_size * d.world}, {d.world} process(es) on {device}")
    t_run = time.perf_counter()
    last_saved = -1
    from tqdm import tqdm
    while epoch < cfg.epochs:
        train_model.train()
        t0, c0, images, loss_sum, loss_n = time.perf_counter(), time.process_time(), 0, 0.0, 0
        bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (d.is_main and cfg.progress), mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
        for step_in_epoch, (x, y) in enumerate(train_batches.iterate(epoch, start_step), start=start_step):
            step_lr = lr_at(global_step, total_steps, warmup_steps, lr, cfg.min_lr, cfg.warmup_lr)
            for g in optimizer.param_groups:
                g["lr"] = step_lr
            if cfg.drop_path_schedule == "linear":
                for m, p in drop_paths:
                    m.drop_prob = p * min(1.0, global_step / max(1, total_steps))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = augment(x)
            target = _soft_targets(y, num_classes, cfg.smoothing)
            x, target = mixup_cutmix(x, target, cfg.mixup, cfg.cutmix, aug_gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                logits = train_model(x)
            loss = _loss(logits, target, cfg.bce)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad or float("inf"))
            if torch.isfinite(grad_norm):
                scaler.step(optimizer)
                if ema is not None:
                    ema.update(model, global_step + 1)
            else:  # the gradients are all-reduced, so every rank skips the same steps
                skipped_steps += 1
            scaler.update()
            global_step += 1
            loss_value = float(loss.detach())
            step_losses.append((global_step, loss_value))
            loss_sum, loss_n, images = loss_sum + loss_value, loss_n + 1, images + len(x) * d.world
            bar.update(1)
            if global_step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{step_lr:.2e}", refresh=False)
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                checkpoint(epoch, step_in_epoch + 1)
                last_saved = global_step
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                bar.close()
                return {"run_dir": str(run_dir), "history": history, "step_losses": step_losses,
                        "global_step": global_step, "skipped_steps": skipped_steps, "stopped": True, "model": model}
        bar.close()
        train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        epoch += 1
        start_step = 0
        row = {"epoch": epoch, "step": global_step, "lr": step_lr,
               "train_loss": float(all_reduce_mean(torch.tensor(loss_sum / max(1, loss_n)))),
               "images_per_s": images / max(train_time, 1e-9), "epoch_time_s": train_time,
               "epoch_cpu_s": train_cpu,
               "skipped_steps": skipped_steps, "skipped_images": train_batches.num_skipped}
        if epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs:
            candidates = [("model", model)] + ([("ema", ema.module)] if ema is not None else [])
            for which, m in candidates:
                if cfg.bn_reestimate_images > 0:
                    m = copy.deepcopy(m)
                    reestimate_bn(m, bn_batches, mean, std, device, cfg.bn_reestimate_images)
                r = evaluate(m, eval_batches, mean, std, device, num_classes, cfg.amp, cfg.channels_last)
                prefix = "" if which == "model" else "ema_"
                row.update({f"{prefix}top1": r["top1"], f"{prefix}top5": r["top5"], f"{prefix}eval_loss": r["loss"]})
                if r["top1"] > best["top1"]:
                    best = {"top1": r["top1"], "top5": r["top5"], "epoch": epoch, "which": which}
                    if d.is_main:
                        save_weights(m, run_dir / "best" / "model.safetensors", {**meta, "epoch": epoch})
                        atomic_write(run_dir / "best" / "config.json",
                                     lambda t: Path(t).write_text(json.dumps({**meta, **best}, indent=2)))
            row["eval_images"] = r["images"]
        row["peak_memory_mb"] = peak_memory_mb(device)
        history.append(row)
        if d.is_main:
            write_metrics(run_dir, history)
            msg = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            log(msg)
        if global_step != last_saved:
            checkpoint(epoch, 0)
            last_saved = global_step
    total_time = time.perf_counter() - t_run
    final = history[-1] if history else {}
    summary = {"run_dir": str(run_dir), "history": history, "step_losses": step_losses, "global_step": global_step,
               "skipped_steps": skipped_steps, "stopped": False, "model": model, "best": best,
               "top1": final.get("top1"), "top5": final.get("top5"), "train_time_s": total_time}
    if d.is_main:
        atomic_write(run_dir / "summary.json", lambda t: Path(t).write_text(json.dumps(
            {k: v for k, v in summary.items() if k not in ("history", "step_losses", "model")}, indent=2)))
        log(f"\ndone: {cfg.model} after {epoch} epochs ({global_step} steps, {total_time / 60:.1f} min): "
            f"test top-1 {final.get('top1', float('nan')):.2f}%, top-5 {final.get('top5', float('nan')):.2f}%"
            + (f", EMA top-1 {final['ema_top1']:.2f}%" if "ema_top1" in final else "")
            + f"; best top-1 {best['top1']:.2f}% (epoch {best['epoch']}, {best['which']}); skipped steps "
              f"{skipped_steps}, skipped images {train_batches.num_skipped}\nrun folder: {run_dir}")
    return summary


# ----------------------------------------------------------------------------------------------- using a checkpoint
def load_model(checkpoint: str | os.PathLike, model: str | None = None, num_classes: int | None = None,
               in_chans: int | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a qtvit weights file / checkpoint / run folder (its metadata names model, classes,
    channels); `model`, `num_classes`, `in_chans` override and are checked. Returns (model in eval mode, metadata)."""
    path = resolve_weights(checkpoint)
    meta = read_metadata(path)
    name = model or meta.get("model")
    if not name:
        raise CheckpointError(f"{path} does not say which model it holds; pass --model")
    if num_classes and meta.get("num_classes") and num_classes != meta["num_classes"]:
        raise CheckpointError(f"{path} was trained for {meta['num_classes']} classes, not {num_classes}; "
                              f"pass --num-classes {meta['num_classes']} or another checkpoint")
    nc = num_classes or meta.get("num_classes") or 1000
    ic = in_chans or meta.get("in_chans") or 3
    net = build_model(name, nc, ic, **(meta.get("model_kwargs") or {}))
    if meta:
        load_weights(net, path, name)
    else:  # a foreign file: the model zoo's converter, when present
        try:
            from ..checkpoints import load_checkpoint
        except ImportError as e:
            raise CheckpointError(f"{path} has no qtvit metadata and no converter is available") from e
        try:
            load_checkpoint(net, path)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit model {name!r} with {nc} classes: {e}") from e
    return net.to(device).eval(), {**meta, "model": name, "num_classes": nc, "in_chans": ic}


def validate(checkpoint: str | os.PathLike, model: str | None = None, data: str | None = None,
             batch_size: int = 256, img_size: int | None = None, crop_pct: float | None = None,
             device: str = "auto", amp: str = "none", limit: int | None = None, workers: int = 4) -> dict:
    """Top-1 / top-5 (micro, percent) and loss of a checkpoint on a dataset's eval split (default: Fashion-MNIST
    test for a Fashion-MNIST checkpoint)."""
    d = setup_distributed(device)
    try:
        net, meta = load_model(checkpoint, model, device=d.device)
        info = open_dataset(data)
        if len(info.classes) > meta["num_classes"]:
            raise ValueError(f"the dataset has {len(info.classes)} classes, the checkpoint {meta['num_classes']}; "
                             "validate on the dataset the model was trained for")
        if meta.get("class_names") and list(meta["class_names"][:len(info.classes)]) != list(info.classes):
            raise ValueError(f"the dataset's classes {info.classes[:5]}... differ from the checkpoint's "
                             f"{meta['class_names'][:5]}...; validate on the dataset the model was trained for")
        data_cfg = resolve_data_config(net, meta["in_chans"], img_size or meta.get("img_size"),
                                       crop_pct or meta.get("crop_pct"), meta.get("mean"), meta.get("std"),
                                       info.mean, info.std)
        batches = build_batches(info, False, data_cfg, batch_size, rank=d.rank, world=d.world, workers=workers,
                                limit=limit)
        r = evaluate(net, batches, data_cfg.mean, data_cfg.std, d.device, meta["num_classes"], amp)
        r["skipped_images"] = batches.num_skipped
        return {**r, "model": meta["model"], "checkpoint": str(resolve_weights(checkpoint))}
    finally:
        cleanup_distributed()


@torch.no_grad()
def predict(images: list[str | os.PathLike], checkpoint: str | os.PathLike, model: str | None = None,
            topk: int = 5, device: str = "cpu") -> list[dict]:
    """Top-k classes with probabilities for each image file: [{"image", "top": [(class name, prob), ...]}]."""
    net, meta = load_model(checkpoint, model, device=device)
    data_cfg = resolve_data_config(net, meta["in_chans"], meta.get("img_size"), meta.get("crop_pct"),
                                   meta.get("mean"), meta.get("std"))
    names = meta.get("class_names") or [str(i) for i in range(meta["num_classes"])]
    names = list(names) + [str(i) for i in range(len(names), meta["num_classes"])]
    tf = EvalTransform(data_cfg.input_size[-1], data_cfg.crop_pct, data_cfg.interpolation)
    mode = "L" if meta["in_chans"] == 1 else "RGB"
    # Decode all first so a bad file fails before any work, naming the file.
    batch = torch.stack([tf(open_image(p, mode)) for p in images])
    probs = net(normalize(batch.to(device), data_cfg.mean, data_cfg.std)).float().softmax(-1)
    k = min(topk, probs.shape[-1])
    p, i = probs.topk(k, dim=-1)
    return [{"image": str(path), "top": [(names[j], float(q)) for q, j in zip(pp.tolist(), ii.tolist())]}
            for path, pp, ii in zip(images, p, i)]
