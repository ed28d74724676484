"""The training loop, in parts that read top to bottom as one run:

    train          set up (setup.py), lock the run folder (run_lock.py), maybe resume, then epochs until done;
                   summary
    resume         model, optimiser, scaler, EMA, run state and random generators from a checkpoint (options that
                   would build another model are refused first)
    train_epoch    the steps of one epoch (or what is left of it), with periodic checkpoints
    train_step     learning rate, drop-path rate, the task's batch and loss, backward, clip, skip a non-finite
                   step (its BatchNorm statistics restored), optimiser, EMA
    end_epoch      the epoch's metrics row; when it is evaluated, a checkpoint first (a resume after an error in the
                   evaluation redoes it), then the evaluation; metrics file, checkpoint
    evaluate_run   the model (and its EMA), BN re-estimated when asked, scored by the task (tasks.py); the best
                   weights by the task's metric; per-class scores (segmentation, detection) to per_class.csv
    save           a checkpoint: weights, EMA, optimiser, run state, every process's random generators; args.json
                   with the first. Weights that are no longer finite are never saved: the run stops with an error

A run stops after its epochs, at --max-steps (then it ends like a finished run: evaluation, final checkpoint,
summary), or on Ctrl-C (single process: after the current step, with a checkpoint to resume from). The run
folder's files change only once training has something to keep: a run refused at its start leaves it as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..checkpoints import (CheckpointError, latest_checkpoint, load_checkpoint, load_train_state, read_config,
                          save_checkpoint)
from .callbacks import Callback, call as _call
from .distributed import all_reduce_mean, broadcast_object, cleanup_distributed, setup_distributed
from ..tasks import check_evaluated
from ..tasks.inputs import autocast
from .evaluate import reestimate_bn_on
from .records import peak_memory_mb, save_best, write_args, write_metrics, write_per_class, write_summary
from .optim import lr_at
from .recipes import TrainConfig
from .run_lock import RunLock
from .setup import Run, resumed_run_dir, setup_run
from .state import RunState, rng_state, set_rng_state

__all__ = ["train", "TrainingInterrupted", "Callback"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. `checkpoint`: the checkpoint a ``--resume`` continues from, or None when nothing
    was saved yet."""

    def __init__(self, run_dir: Path | None, checkpoint: Path | None):
        super().__init__(str(checkpoint or "nothing saved"))
        self.run_dir, self.checkpoint = run_dir, checkpoint


class _StopOnCtrlC:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one stops at once.
    Only in a single process's main thread: under torchrun every rank must stop at the same step."""

    def __init__(self, enabled: bool, log):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested, self.log, self.previous = False, log, None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\ninterrupted: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
                 file=sys.stderr)

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


def train(cfg: TrainConfig, callbacks=()) -> dict:
    """Train as `cfg` says (one process, or one of torchrun's) and return a summary: run folder, per-epoch
    history, per-step losses of this process's steps, the final scores (the task's: top1/top5, or miou/macc/aacc
    and per-class IoU) and the best, skipped steps, the model. `callbacks`: ``Callback`` objects whose hooks the
    loop calls."""
    d = setup_distributed(cfg.device)
    run, lock = None, None
    try:
        run = setup_run(cfg, d)
        run.callbacks = list(callbacks)
        lock = _claim_run_folder(run)
        state = resume(run) if cfg.resume else RunState()
        if state.pending is not None:  # the run stopped in an epoch's evaluation: it is redone first
            _record_epoch(run, state, {**state.pending, **evaluate_run(run, state)})
        run.log(f"run {run.run_dir}: {cfg.model} on {run.info.kind} ({run.train_batches.num_samples} train / "
                f"{run.eval_batches.num_samples} eval images, {run.num_classes} classes, "
                f"{run.data_cfg.input_size[-1]} px), {cfg.epochs} epochs x {run.steps_per_epoch} steps, global batch "
                f"{cfg.batch_size * d.world}, {d.world} process(es) on {run.device}")
        _call(run, "on_run_start", state)
        t0 = time.perf_counter()
        with _StopOnCtrlC(not d.enabled, run.log) as stop:
            while state.epoch < cfg.epochs and not _at_max_steps(cfg, state) and not stop.requested:
                train_epoch(run, state, stop)
                if state.step_in_epoch == run.steps_per_epoch:
                    end_epoch(run, state)
            if stop.requested:
                if run.saved_step != state.global_step:
                    save(run, state)
                raise KeyboardInterrupt
        return _finish(run, state, time.perf_counter() - t0)
    except KeyboardInterrupt as e:
        where = run.run_dir if run is not None else None
        raise TrainingInterrupted(where, latest_checkpoint(where) if where is not None else None) from e
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()


def _at_max_steps(cfg: TrainConfig, state: RunState) -> bool:
    return cfg.max_steps is not None and state.global_step >= cfg.max_steps


def _claim_run_folder(run: Run) -> RunLock | None:
    """Rank 0 locks the run folder (one training at a time) and checks that a new run does not write into an old
    one; every rank raises what it met. args.json waits for the first checkpoint (``save``): a run that fails
    before it, a refused resume included, leaves the folder as it was."""
    lock, error = None, None
    if run.dist.is_main:
        try:
            lock = RunLock(run.run_dir).acquire()
            if not run.cfg.resume and latest_checkpoint(run.run_dir) is not None:
                raise ValueError(f"{run.run_dir} already holds a run; continue it with --resume {run.run_dir}, or "
                                 "pick another --name or --output")
        except (OSError, ValueError) as e:
            if lock is not None:
                lock.release()
            error = e
    error = broadcast_object(error)
    if error is not None:
        raise error
    return lock


def _write_args(run: Run) -> None:
    args = {**dataclasses.asdict(run.cfg), "world_size": run.dist.world,
            "data_config": dataclasses.asdict(run.data_cfg)}
    write_args(run.run_dir, args)


# ----------------------------------------------------------------------------------------------- resume
def resume(run: Run) -> RunState:
    """Load the checkpoint `cfg.resume` names (a checkpoint folder, or a run folder's latest) into the run."""
    cfg, d = run.cfg, run.dist
    ckpt = resumed_run_dir(cfg.resume)[1]
    try:
        st = load_train_state(ckpt)
        state = RunState.from_dict(st["run"])
    except (pickle.UnpicklingError, KeyError) as e:
        raise CheckpointError(f"--resume {ckpt}: its train_state.pt was written by an older qtvit (or is damaged) "
                              f"and cannot be loaded safely ({type(e).__name__}); start a new run (its weights still "
                              f"load: qtvit validate --checkpoint {ckpt})") from e
    _check_same_model(run, ckpt, st.get("config") or {})
    try:  # exactly the run's model: nothing adapted or dropped
        load_checkpoint(run.model, ckpt / "model.safetensors", adapt=False)
        if run.ema is not None:
            if not (ckpt / "ema.safetensors").is_file():
                raise CheckpointError(f"{ckpt} holds no EMA weights (the run had no EMA); leave --model-ema out")
            load_checkpoint(run.ema.module, ckpt / "ema.safetensors", adapt=False)
    except CheckpointError as e:
        raise CheckpointError(f"--resume {ckpt}: {e}; resume with the run's --model, --num-classes and "
                              "--model-kwargs (leave them out to take the run's)") from e
    if st["global_batch"] != cfg.batch_size * d.world or st["seed"] != cfg.seed:
        raise ValueError(f"--resume {ckpt}: the run used global batch {st['global_batch']} and seed {st['seed']}; "
                         f"now {cfg.batch_size * d.world} and {cfg.seed}. Resume with the same --batch-size x "
                         "processes and --seed")
    run.optimizer.load_state_dict(st["optimizer"])
    run.scaler.load_state_dict(st["scaler"])
    rngs = st["rng"]
    set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0], run.aug_gen)
    run.saved_step = state.global_step
    run.log(f"resumed {ckpt} at epoch {state.epoch + 1} step {state.step_in_epoch} (global step {state.global_step})")
    return state


_MODEL_OPTIONS = ("task", "model", "model_kwargs")  # with the class count: what shapes the weights


def _check_same_model(run: Run, ckpt: Path, saved: dict) -> None:
    """Options given with --resume that would build another model than the checkpoint's are refused before
    anything is loaded or written."""
    def same(a, b) -> bool:  # args.json and the recipes differ in lists and tuples only
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    def show(v) -> str:  # as given on the command line: KEY=VALUE pairs for --model-kwargs
        return (" ".join(f"{k}={json.dumps(x)}" for k, x in v.items()) or "none") if isinstance(v, dict) else str(v)
    differ = [f"--{k.replace('_', '-')} {show(getattr(run.cfg, k))} (the run's: {show(saved[k])})"
              for k in _MODEL_OPTIONS if k in saved and not same(getattr(run.cfg, k), saved[k])]
    classes = (read_config(ckpt / "model.safetensors") or {}).get("model_args", {}).get("num_classes")
    if classes is not None and classes != run.num_classes:
        differ.append(f"--num-classes {run.num_classes} (the run's: {classes})")
    if differ:
        raise ValueError(f"--resume {ckpt}: {'; '.join(differ)}: these options make the model, which a resume cannot "
                         "change; leave them out to continue the run as it was, or start a new run (another --name)")


# ----------------------------------------------------------------------------------------------- training
def train_epoch(run: Run, state: RunState, stop: _StopOnCtrlC) -> None:
    """The steps of epoch `state.epoch` from `state.step_in_epoch` on; returns at its end, at --max-steps, or when
    asked to stop. Time spent is added to the epoch's sums in `state` (carried by checkpoints)."""
    from tqdm import tqdm
    cfg = run.cfg
    run.train_model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=run.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               disable=not (run.dist.is_main and cfg.progress), mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
    try:
        for x, y in run.train_batches.iterate(state.epoch, state.step_in_epoch):
            _call(run, "on_step_start", state)
            loss = train_step(run, state, x, y)
            _call(run, "on_step_end", state, loss)
            bar.update(1)
            if state.global_step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.lr:.2e}", refresh=False)
            if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
                t0, c0 = _add_time(state, t0, c0)  # the saved sums include the time up to here
                save(run, state)
            if _at_max_steps(cfg, state) or stop.requested:
                break
    finally:
        bar.close()
        _add_time(state, t0, c0)


def _add_time(state: RunState, t0: float, c0: float) -> tuple[float, float]:
    t1, c1 = time.perf_counter(), time.process_time()
    state.time_s += t1 - t0
    state.cpu_s += c1 - c0
    return t1, c1


def train_step(run: Run, state: RunState, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step on a loader batch; returns the loss."""
    cfg, model = run.cfg, run.model
    state.lr = lr_at(state.global_step, run.total_steps, run.warmup_steps, run.lr, cfg.min_lr, cfg.warmup_lr,
                     cfg.schedule)
    for g in run.optimizer.param_groups:
        g["lr"] = state.lr
    if cfg.drop_path_schedule == "linear":  # official EfficientViT: the rate grows with training progress
        for m, p in run.drop_paths:
            m.drop_prob = p * min(1.0, state.global_step / max(1, run.total_steps))
    x, target = run.task.batch(x, y, run.device, run.aug_gen)
    _copy_all(run.norm_saved, run.norm_stats)  # so that a skipped step can leave the BN statistics as they were
    out = _forward(run, x)
    loss = run.task.loss(out, target)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad or float("inf"))
    if torch.isfinite(grad_norm):
        run.scaler.step(run.optimizer)
        if run.ema is not None:
            run.ema.update(model, state.global_step + 1)
    else:  # the gradients are all-reduced, so every rank skips the same steps
        state.skipped_steps += 1
        _copy_all(run.norm_stats, run.norm_saved)
    run.scaler.update()
    state.global_step += 1
    state.step_in_epoch += 1
    value = float(loss.detach())
    run.step_losses.append((state.global_step, value))
    state.loss_sum += value
    state.loss_steps += 1
    state.images += len(x) * run.dist.world
    return value


def _copy_all(dst: list, src: list) -> None:
    if src:  # a model without BatchNorm has none
        torch._foreach_copy_(dst, src)


def _forward(run: Run, x: torch.Tensor):
    try:
        with autocast(run.device, run.cfg.amp):
            return run.train_model(x)
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise ValueError(f"--batch-size {run.cfg.batch_size}: {run.cfg.model}'s BatchNorm layers need at least 2 "
                         f"values per channel in training ({e}); pass --batch-size 2 or more (images per "
                         "process)") from None


# ----------------------------------------------------------------------------------------------- epoch end
def end_epoch(run: Run, state: RunState) -> None:
    """The completed epoch's row (its sums cover the whole epoch, resumed or not), evaluation when due, the
    metrics file, a checkpoint. An epoch that is evaluated is saved first, its row pending in the run state: an
    error in the evaluation (a bad validation file) loses no training, and a resume redoes the evaluation."""
    cfg = run.cfg
    state.epoch += 1
    row = {"epoch": state.epoch, "step": state.global_step, "lr": state.lr,
           "train_loss": float(all_reduce_mean(torch.tensor(state.loss_sum / max(1, state.loss_steps)))),
           "images_per_s": state.images / max(state.time_s, 1e-9), "epoch_time_s": state.time_s,
           "epoch_cpu_s": state.cpu_s, "skipped_steps": state.skipped_steps,
           "skipped_images": run.train_batches.num_skipped}
    state.step_in_epoch = 0
    state.start_epoch_sums()
    if row["train_loss"] == 0:
        run.log(f"warning: epoch {state.epoch}'s training loss is exactly 0: its batches gave nothing to learn from "
                "(segmentation masks with no labelled pixel, only the ignore label 255?); check the training data",
                file=sys.stderr)
    if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs:
        state.pending = row
        save(run, state)
        row = {**row, **evaluate_run(run, state)}
    _record_epoch(run, state, row)


def _record_epoch(run: Run, state: RunState, row: dict) -> None:
    """The epoch's row into the history, the metrics files and the log; then its checkpoint."""
    state.pending = None
    row["peak_memory_mb"] = peak_memory_mb(run.device)
    state.history.append(row)
    if run.dist.is_main:
        write_metrics(run.run_dir, state.history)
        run.log(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    save(run, state)
    _call(run, "on_epoch_end", state, row)


def _check_finite(run: Run, state: RunState) -> None:
    """Weights or statistics that are no longer finite are never saved (nor kept as the best): the run stops."""
    models = [("", run.model)] + ([("EMA ", run.ema.module)] if run.ema is not None else [])
    for which, m in models:
        tensors = [(n, t) for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for _, t in tensors]).all()):
            bad = [n for n, t in tensors if not t.isfinite().all()]
            raise ValueError(f"the model's {which}weights are not finite after step {state.global_step} ({bad[0]} and "
                             f"{len(bad) - 1} more): training diverged, so nothing of it is saved. Lower --lr (now "
                             f"{run.lr:g}) or --weight-decay, or clip the gradients (--clip-grad 1), and start again "
                             "or --resume from the last checkpoint")


def evaluate_run(run: Run, state: RunState) -> dict:
    """Evaluate the model and its EMA (BN statistics re-estimated first when asked); the best by the task's metric
    so far is saved as the run's best weights. Returns the metrics as row entries: the task's scores, ``eval_loss``
    (``ema_``-prefixed for the EMA) and ``eval_images``; per-class lists go to per_class.csv instead."""
    cfg, task, out = run.cfg, run.task, {}
    _check_finite(run, state)
    candidates = [("model", run.model)] + ([("ema", run.ema.module)] if run.ema is not None else [])
    for which, m in candidates:
        if cfg.bn_reestimate_images > 0:
            m = copy.deepcopy(m)
            reestimate_bn_on(m, run.bn_batches, run.data_cfg, run.device, cfg.bn_reestimate_images)
        r = check_evaluated(task.evaluate(m, run.eval_batches, run.device), run.eval_batches)
        prefix = "" if which == "model" else "ema_"
        scores = {k: r.scores[k] for k in task.scores}
        out.update({f"{prefix}{k}": v for k, v in scores.items()})
        out[f"{prefix}eval_loss"] = r.loss
        if r.per_class:
            state.per_class.append({"epoch": state.epoch, "step": state.global_step, "which": which, **r.per_class})
        # NaN (no class defined) is never better
        if r[task.metric] > state.best.get(task.metric, float("-inf")):
            state.best = {**scores, "epoch": state.epoch, "step": state.global_step, "which": which,
                          "metric": task.metric}
            if run.dist.is_main:
                save_best(run.run_dir, m, state.best)
    out["eval_images"] = r.images
    if state.per_class and run.dist.is_main:
        write_per_class(run.run_dir, state.per_class, run.class_names)
    return out


def save(run: Run, state: RunState) -> None:
    """A checkpoint at the current step (collective: every process contributes its random generators)."""
    d = run.dist
    _check_finite(run, state)
    rngs = [rng_state(run.aug_gen)]
    if d.enabled:
        gathered = [None] * d.world
        torch.distributed.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if d.is_main:
        if not run.args_written:  # the run's options, once training has something to keep (see _claim_run_folder)
            _write_args(run)
            run.args_written = True
        train_state = {"run": state.to_dict(), "optimizer": run.optimizer.state_dict(),
                       "scaler": run.scaler.state_dict(), "rng": rngs, "seed": run.cfg.seed,
                       "global_batch": run.cfg.batch_size * d.world, "config": dataclasses.asdict(run.cfg)}
        save_checkpoint(run.run_dir, state.global_step, run.model, train_state,
                        run.ema.module if run.ema is not None else None, keep=run.cfg.keep_checkpoints)
    if d.enabled:
        torch.distributed.barrier()
    run.saved_step = state.global_step


# ----------------------------------------------------------------------------------------------- the end
def _finish(run: Run, state: RunState, seconds: float) -> dict:
    """End every run the same way, finished or stopped at --max-steps: an evaluation of the final weights (unless
    the last epoch just had one), a final checkpoint, summary.json and the closing log line."""
    cfg, task = run.cfg, run.task
    final = state.history[-1] if state.history and state.history[-1]["step"] == state.global_step else None
    if final is None or task.metric not in final:
        final = evaluate_run(run, state)
    if run.saved_step != state.global_step:
        save(run, state)
    stopped = state.epoch < cfg.epochs
    summary = {"run_dir": str(run.run_dir), "history": state.history, "step_losses": run.step_losses,
               "global_step": state.global_step, "epochs_done": state.epoch, "skipped_steps": state.skipped_steps,
               "stopped": stopped, "model": run.model, "task": cfg.task, "metric": task.metric, "best": state.best,
               **{k: final.get(k) for k in task.scores}, **_last_per_class(run, state), "train_time_s": seconds}
    if run.dist.is_main:
        write_summary(run.run_dir, summary)
        run.log(_closing_line(run, state, final, stopped, seconds))
    _call(run, "on_run_end", summary)
    return summary


def _last_per_class(run: Run, state: RunState) -> dict:
    """The per-class lists of the model's last evaluation as {"per_class_iou": {class: value}, ...}."""
    rows = [r for r in state.per_class if r["which"] == "model"]
    if not rows:
        return {}
    names = run.class_names
    return {f"per_class_{k}": dict(zip(names, v)) for k, v in rows[-1].items() if isinstance(v, list)}


def _closing_line(run: Run, state: RunState, final: dict, stopped: bool, seconds: float) -> str:
    cfg, task, best = run.cfg, run.task, state.best

    def scores(prefix: str) -> str:
        return ", ".join(f"{k} {final[prefix + k]:.2f}%" for k in task.scores if prefix + k in final)
    how = f"stopped at --max-steps {cfg.max_steps}" if stopped else "done"
    best_text = (f"best {task.metric} {best[task.metric]:.2f}% (epoch {best['epoch']}, {best['which']})"
                 if task.metric in best else f"no best {task.metric} (not a number)")
    ema = f", EMA {scores('ema_')}" if f"ema_{task.metric}" in final else ""
    return (f"\n{how}: {cfg.model} after {state.global_step} steps ({state.epoch} of {cfg.epochs} epochs, "
            f"{seconds / 60:.1f} min): test {scores('')}{ema}; {best_text}; skipped steps {state.skipped_steps}, "
            f"skipped images {run.train_batches.num_skipped}\nrun folder: {run.run_dir}")
