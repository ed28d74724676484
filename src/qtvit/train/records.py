"""The run's bookkeeping, in one place: every file a run writes beside its checkpoints.

    args.json         the run's options and data config (with its first checkpoint)
    metrics.csv/.jsonl one row per epoch: training sums, the task's scores (``EvalResult.scores`` under their own
                      names, ``ema_``-prefixed for the EMA), eval_loss, eval_images, peak_memory_mb
    per_class.csv     one line per evaluation and class (segmentation): the per-class scores by their names
    best/             the weights with the best score of the task's metric so far, and their config.json
    summary.json      the end of the run: history-free summary, the final and best scores, per-class values
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch.nn as nn

from .._io import write_text
from .._memory import peak_memory_mb
from .._utils import to_json
from ..checkpoints import model_config, save_weights

__all__ = ["peak_memory_mb", "write_args", "write_metrics", "write_per_class", "save_best", "write_summary"]


def write_args(run_dir: str | os.PathLike, args: dict) -> None:
    write_text(Path(run_dir) / "args.json", json.dumps(args, indent=2, default=str))


def write_metrics(run_dir: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from all epoch rows (atomic, so a resumed run never duplicates
    or loses a row)."""
    run_dir = Path(run_dir)
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    write_text(run_dir / "metrics.jsonl", "".join(to_json(r) + "\n" for r in rows))


def write_per_class(run_dir: str | os.PathLike, rows: list[dict], class_names: list[str]) -> None:
    """Rewrite ``per_class.csv`` from every evaluation's per-class scores (rows {"epoch", "step", "which", <score>:
    one value per class}): one line per evaluation and class, a column per score; an undefined score is empty."""
    scores = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, list)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "step", "which", "class_index", "class", *scores])
    for r in rows:
        for i, name in enumerate(class_names):
            w.writerow([r["epoch"], r["step"], r["which"], i, name,
                        *("" if r.get(k) is None or r[k][i] is None else r[k][i] for k in scores)])
    write_text(Path(run_dir) / "per_class.csv", buf.getvalue())


def save_best(run_dir: str | os.PathLike, model: nn.Module, best: dict) -> None:
    """``best/``: a save_pretrained folder (weights and config.json) with what made them the best."""
    save_weights(model, Path(run_dir) / "best" / "model.safetensors")
    write_text(Path(run_dir) / "best" / "config.json", to_json({**model_config(model), **best}, indent=2))


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    """``summary.json``: the summary less the history, the step losses and the model (in the other files)."""
    text = {k: v for k, v in summary.items() if k not in ("history", "step_losses", "model")}
    write_text(Path(run_dir) / "summary.json", to_json(text, indent=2))
