"""The kernel study's summary: one row per variant with its 95 % interval and Welch's t-tests against softmax and the
attention-free control (``stats.py``), how many seeds learned the task (a seed either finds the marker or stays at
the control's level, so the mean of five seeds mixes a rate and a level: both are reported, the rate with Fisher's
exact test), the control check, and the bar figure."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

from .net import CONTROL
from .runs import Variant
from .stats import fisher_exact, mean_ci95, welch

__all__ = ["SUMMARY_FIELDS", "summarise", "markdown_summary", "plot_study", "CONTROL_CEILING", "learned_threshold"]

SUMMARY_FIELDS = ["variant", "kernel", "softmax_residual", "epochs", "seeds", "diverged", "top1_mean", "top1_std",
                  "top1_ci95_low", "top1_ci95_high", "top1_minus_softmax", "p_vs_softmax", "p_vs_control", "p_vs_1x",
                  "learned", "p_learned_vs_softmax", "top1_learned_mean", "val_top1_mean", "train_images_per_s",
                  "peak_mib", "params"]
CONTROL_CEILING = 100.0 / 3  # the design's ceiling of a network without token mixing (docs/kernel_study.md)


def learned_threshold(test_canvases: int) -> float:
    """The top-1 (%) above which a seed has learned more than the control can: the ceiling plus three binomial
    standard errors of a model at the ceiling measured on ``test_canvases`` (2 000: 36.5 %)."""
    p = CONTROL_CEILING / 100
    return CONTROL_CEILING + 300.0 * math.sqrt(p * (1 - p) / test_canvases)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _same_length(name: str, variant: Variant) -> str:
    """The reference variant ``name`` (softmax, control) trained as long as ``variant``."""
    return Variant(name, length=variant.length).name


def _p(top1: list[float], other: list[float] | None) -> float | None:
    got = None if other is None else welch(top1, other)
    return None if got is None else got[2]


def _floats(rows: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def _learned(top1: list[float] | None, threshold: float) -> list[float]:
    return [t for t in top1 or () if t > threshold]


def _p_learned(top1: list[float], seeds: int, other: list[float] | None, other_seeds: int,
               threshold: float) -> float | None:
    """Fisher's test of the seeds that learned, out of all seeds (a diverged seed did not learn)."""
    if other is None or other is top1:
        return None
    return fisher_exact(len(_learned(top1, threshold)), seeds, len(_learned(other, threshold)), other_seeds)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _variant_row(variant: str, rs: list[dict], top1_of: dict[str, list[float]], seeds_of: dict[str, int],
                 threshold: float) -> dict:
    v = Variant.parse(variant)
    top1 = top1_of[variant]
    learned = _learned(top1, threshold)
    ci = mean_ci95(top1)
    soft_name = _same_length("softmax", v)
    soft, ctrl = top1_of.get(soft_name), top1_of.get(_same_length(CONTROL, v))
    short = top1_of.get(Variant(v.kernel, v.residual, v.rope).name) if v.length != 1 else None
    mems, val, epochs = _floats(rs, "peak_mib"), _floats(rs, "val_top1"), _floats(rs, "recipe_epochs")
    mean, soft_mean = _mean(top1), _mean(soft or [])
    return dict(variant=variant, kernel=v.kernel, softmax_residual=int(v.residual),
                epochs=int(epochs[0]) if epochs else None, seeds=len(rs), diverged=len(rs) - len(top1),
                top1_mean=mean, top1_std=_std(top1), top1_ci95_low=None if ci is None else ci[0],
                top1_ci95_high=None if ci is None else ci[1],
                top1_minus_softmax=None if mean is None or soft_mean is None else mean - soft_mean,
                p_vs_softmax=None if soft is top1 else _p(top1, soft),
                p_vs_control=None if ctrl is top1 else _p(top1, ctrl), p_vs_1x=_p(top1, short),
                learned=len(learned),
                p_learned_vs_softmax=_p_learned(top1, len(rs), soft, seeds_of.get(soft_name, 0), threshold),
                top1_learned_mean=_mean(learned), val_top1_mean=_mean(val),
                train_images_per_s=statistics.fmean(_floats(rs, "train_images_per_s")),
                peak_mib=_mean(mems), params=int(float(rs[0]["params"])))


def summarise(runs: Sequence[dict], test_canvases: int = 2000) -> tuple[list[dict], str]:
    """One row per variant (in the order of ``runs``) and the control check's line.

    ``p_vs_softmax`` and ``p_vs_control``: Welch's two-sided t-test of the variant's top-1 over seeds against
    softmax's and the control's trained as long (``softmax@3x`` for ``qt@3x``); ``p_vs_1x``: against the same variant
    at the recipe's length. ``top1_ci95_*``: the mean's 95 % interval (Student's t). Empty with fewer than 2 seeds.
    ``diverged``: seeds whose training loss became non-finite (no top-1; the top-1 columns are over the others).
    ``learned``: seeds above ``learned_threshold(test_canvases)``; ``p_learned_vs_softmax``: Fisher's exact test of
    that count out of all seeds (a diverged seed did not learn) against softmax's; ``top1_learned_mean``: the mean
    over those seeds only."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    top1_of = {variant: _floats(rs, "top1") for variant, rs in by.items()}  # diverged runs have no top-1
    seeds_of = {variant: len(rs) for variant, rs in by.items()}
    threshold = learned_threshold(test_canvases)
    rows = [_variant_row(variant, rs, top1_of, seeds_of, threshold) for variant, rs in by.items()]
    return rows, _control_check(rows, top1_of)


def _control_check(rows: list[dict], top1_of: dict[str, list[float]]) -> str:
    soft = next((r for r in rows if r["variant"] == "softmax"), None)
    ctrl = next((r for r in rows if r["variant"] == CONTROL), None)
    if soft is None or ctrl is None or soft["top1_mean"] is None or ctrl["top1_mean"] is None:
        return "control check: needs both softmax and the control"
    gap = soft["top1_mean"] - ctrl["top1_mean"]
    head = f"control check: softmax {soft['top1_mean']:.2f} - control {ctrl['top1_mean']:.2f} = {gap:.2f} points"
    if min(len(top1_of["softmax"]), len(top1_of[CONTROL])) < 2:
        return head + ": one seed, no test possible (use --seeds 2 or more)"
    p = welch(top1_of["softmax"], top1_of[CONTROL])[2]
    verdict = "attention matters" if gap > 0 and p < 0.05 else "NOT shown that attention matters"
    return (f"{head}, Welch p = {p:.2g}: {verdict}; control 95 % interval [{ctrl['top1_ci95_low']:.1f}, "
            f"{ctrl['top1_ci95_high']:.1f}] against the design ceiling {CONTROL_CEILING:.1f}")


def _fmt(value, spec: str) -> str:
    return "–" if value in (None, "") else format(float(value), spec)


def markdown_summary(rows: Sequence[dict]) -> str:
    """The summary as a markdown table (``kernel_study.md``, pasted into the docs as measured)."""
    lines = ["| variant | epochs | seeds | top-1 % (mean ± sd) | 95 % interval | vs softmax | p vs softmax | "
             "p vs control | learned | p learned vs softmax | top-1 of those learned | img/s | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = f"{_fmt(r['top1_ci95_low'], '.1f')}–{_fmt(r['top1_ci95_high'], '.1f')}"
        seeds = f"{r['seeds']} ({r['diverged']} diverged)" if r["diverged"] else str(r["seeds"])
        top1 = "–" if r["top1_mean"] is None else f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"
        lines.append(f"| {r['variant']} | {r['epochs'] or '–'} | {seeds} | {top1} | {ci} | "
                     f"{_fmt(r['top1_minus_softmax'], '+.2f')} | "
                     f"{_fmt(r['p_vs_softmax'], '.2g')} | {_fmt(r['p_vs_control'], '.2g')} | "
                     f"{r['learned']}/{r['seeds']} | {_fmt(r['p_learned_vs_softmax'], '.2g')} | "
                     f"{_fmt(r['top1_learned_mean'], '.1f')} | {r['train_images_per_s']:.0f} | "
                     f"{_fmt(r['peak_mib'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot_study(rows: Sequence[dict], path: str | Path, title: str = "", runs: Sequence[dict] = ()) -> Path:
    """Top-1 mean with its 95 % interval, training images/s and peak memory per variant (Tables 2 and 3 as bars);
    every seed of ``runs`` as a dot over its variant's bar (the outcome is bimodal: a mean alone hides it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    names = [r["variant"] + (f" ({r['diverged']} diverged)" if r["diverged"] else "") for r in rows]
    rows = [dict(r, top1_mean=r["top1_mean"] or 0.0) for r in rows]  # no finished seed: no bar
    colours = ["tab:grey" if r["kernel"] == CONTROL else "tab:orange" if r["softmax_residual"] else
               "tab:red" if r["kernel"] == "softmax" else "tab:blue" for r in rows]
    low = [r["top1_mean"] - (r["top1_ci95_low"] if r["top1_ci95_low"] is not None else r["top1_mean"]) for r in rows]
    high = [(r["top1_ci95_high"] if r["top1_ci95_high"] is not None else r["top1_mean"]) - r["top1_mean"]
            for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.28 * len(rows) + 1.6), sharey=True)
    axes[0].barh(names, [r["top1_mean"] for r in rows], xerr=[low, high], color=colours, capsize=2)
    row_of = {r["variant"]: i for i, r in enumerate(rows)}
    seeds = [(float(r["top1"]), row_of[r["variant"]]) for r in runs
             if r["variant"] in row_of and r["top1"] not in (None, "")]
    if seeds:
        axes[0].scatter(*zip(*seeds), s=9, color="black", zorder=3)
    axes[0].axvline(CONTROL_CEILING, color="tab:grey", linestyle=":", linewidth=1)
    axes[0].set(xlabel="test top-1 (%): mean, 95 % interval, one dot per seed")
    lo = min([r["top1_mean"] - d for r, d in zip(rows, low)] + [t for t, _ in seeds])
    axes[0].set_xlim(max(0.0, lo - 5), 100)
    axes[1].barh(names, [r["train_images_per_s"] for r in rows], color=colours)
    axes[1].set(xlabel="training images/s")
    axes[2].barh(names, [r["peak_mib"] or 0.0 for r in rows], color=colours)
    axes[2].set(xlabel="peak MiB of one training step")
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, title=title)
