"""Top-1 against latency with each family's Pareto front (QT-ViT Fig. 1): ``qtvit figure pareto``.

    qtvit figure pareto --csv results/my_accuracy.csv       # columns model, top1, latency_ms [, family]
    qtvit figure pareto --benchmark results/models_cpu.csv  # papers' top-1 + this machine's batch-1 latency

Pareto CSV format: a header line with at least ``model``, ``top1`` (percent) and ``latency_ms``; optional
``family`` (default: the model name up to its first ``_``, e.g. ``qtvit``, ``efficientvit``), ``params_m``,
``gmacs``. Lines starting with ``#`` are comments.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..._utils import parse_size
from ..results import read_csv, save_figure, write_csv

__all__ = ["PAPER_TOP1", "PARETO_FIELDS", "read_pareto_csv", "pareto_front", "plot_pareto",
           "pareto_rows_from_benchmark", "write_pareto_csv"]

PARETO_FIELDS = ["model", "family", "top1", "latency_ms", "params_m", "gmacs"]

# ImageNet-1k top-1 at 224 as published (QT-ViT Table 1; EfficientViT model zoo; L2ViT README), for the Pareto
# plot of `--benchmark`: the accuracy is the papers', the latency this machine's.
PAPER_TOP1 = {
    "efficientvit_b1": 79.4, "efficientvit_b2": 82.1, "efficientvit_b3": 83.5,
    "efficientvit_l1": 84.5, "efficientvit_l2": 85.1, "efficientvit_l3": 85.8,
    "qtvit_1": 79.6, "qtvit_2": 82.5, "qtvit_3": 83.9, "qtvit_4": 84.7, "qtvit_5": 85.2, "qtvit_6": 86.0,
    "l2vit_tiny": 83.1, "l2vit_small": 84.1, "l2vit_base": 84.4,
}


def read_pareto_csv(path: str | Path) -> list[dict]:
    """Rows of a Pareto CSV (see the module docstring): ``top1`` and ``latency_ms`` as floats, ``family`` filled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV at {path}")
    rows = read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    missing = {"model", "top1", "latency_ms"} - set(rows[0])
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; a Pareto CSV needs "
                         f"model, top1, latency_ms (and optionally family, params_m, gmacs)")
    for i, r in enumerate(rows, start=2):
        try:
            r["top1"], r["latency_ms"] = float(r["top1"]), float(r["latency_ms"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, row {i}: top1 and latency_ms must be numbers, got {r}") from None
        r["family"] = r.get("family") or r["model"].split("_")[0]
    return rows


def pareto_front(rows: Sequence[dict]) -> list[dict]:
    """The rows no other row beats on both latency (lower) and top-1 (higher), by increasing latency."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r["latency_ms"], -r["top1"])):
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Top-1 against latency, one colour per family, each family's Pareto front joined, the overall front dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = list(dict.fromkeys(r["family"] for r in rows))
    for i, fam in enumerate(families):
        sel = [r for r in rows if r["family"] == fam]
        front = pareto_front(sel)
        color = plt.cm.tab10(i % 10)
        ax.plot([r["latency_ms"] for r in front], [r["top1"] for r in front], "-", color=color, lw=2 if fam == "qtvit"
                else 1.2, label=fam)
        ax.scatter([r["latency_ms"] for r in sel], [r["top1"] for r in sel], color=color, s=22, zorder=3)
        for r in sel:
            ax.annotate(r["model"], (r["latency_ms"], r["top1"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    overall = pareto_front(rows)
    ax.plot([r["latency_ms"] for r in overall], [r["top1"] for r in overall], ":", color="grey", lw=1,
            label="overall front")
    ax.set_xscale("log")
    ax.set(xlabel="latency (ms)", ylabel="ImageNet top-1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)  # an axes title, smaller than save_figure's suptitle
    return save_figure(fig, path)


def pareto_rows_from_benchmark(bench_csv: str | Path, *, mode: str = "eager", size: str = "224",
                               batch: int = 1, top1: dict[str, float] | None = None) -> list[dict]:
    """Pareto rows from a ``qtvit benchmark models`` CSV: its latency at (mode, size, batch), the papers' top-1."""

    h, w = parse_size(size)
    top1 = PAPER_TOP1 if top1 is None else top1
    rows = []
    for r in read_csv(Path(bench_csv)):
        if (r["mode"], int(r["height"]), int(r["width"]), int(r["batch"])) != (mode, h, w, batch):
            continue
        if r["model"] in top1 and r["time_ms"] not in ("", None):
            rows.append(dict(model=r["model"], top1=top1[r["model"]], latency_ms=float(r["time_ms"]),
                             family=r["model"].split("_")[0], params_m=r.get("params_m", ""),
                             gmacs=r.get("gmacs", "")))
    if not rows:
        raise ValueError(f"{bench_csv} has no measured {mode} batch-{batch} {size} px point of a model with a known "
                         f"top-1 ({', '.join(top1)})")
    return rows


def write_pareto_csv(rows: Sequence[dict], path: str | Path, comment: str) -> Path:
    """The Pareto plot's points as CSV (``# comment`` first), through the benchmarks' atomic CSV writer."""
    return write_csv(list(rows), path, comment, PARETO_FIELDS, extrasaction="ignore")
