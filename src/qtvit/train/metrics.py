"""The per-epoch metrics files of a run, and its peak memory."""
from __future__ import annotations

import csv
import io
import os
import resource
from pathlib import Path

import torch

from .._io import write_text
from .._utils import to_json

__all__ = ["peak_memory_mb", "write_metrics", "write_per_class"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else the resident-set high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
