"""`qtvit study kernels`: every kernel trained in one architecture, under one recipe, over several seeds, on a
task where global context decides (``task.py``), against an attention-free control; then the kernels' fidelity to
softmax on the trained softmax model's q and k (``fidelity.py``).

Writes into ``--out``:
- ``kernel_study_runs.csv``: one row per (variant, seed), written after every run (an interrupted study keeps its
  finished runs);
- ``kernel_study.csv``: one row per variant: top-1 mean ± std over seeds, training images/s, peak memory of one
  training step, parameters, and the gap to softmax; its first line says whether the control falls short of softmax
  by more than the seed spread;
- ``kernel_study.png``: the same as bars (matplotlib, the ``plot`` extra);
- ``kernel_fidelity.csv`` / ``kernel_fidelity.png``: KL and top-k overlap of each kernel's map against softmax's;
- ``kernel_fidelity_maps.png``: the marker token's attention in the last layer of the softmax model, under every
  kernel (QT-ViT Fig. 2 on a study canvas).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..bench.measure import device_line, write_csv
from ..data.fashion_mnist import load_fashion_mnist
from .fidelity import fidelity_rows, plot_fidelity
from .net import CONTROL
from .runs import Data, Recipe, build_net, parse_variant, run_one, variant_name
from .task import PointerSpec, make_pointer_canvases, marker_slices

__all__ = ["STUDY_KERNELS", "StudyPlan", "FULL", "SMALL", "make_data", "run_study", "summarise"]

# QT-ViT Table 2, Table 3, then the kernels of issue 11's point 2
STUDY_KERNELS = ("softmax", "relu", "cosine", "mean", "sigmoid_softmax", "angular", "taylor1", "qt",
                 "taylor2", "qt_pool", "qt_chunk", "qt_random", "qt_paper",
                 "polaformer", "inline", "mala", "rala")

RUN_FIELDS = ["variant", "kernel", "softmax_residual", "seed", "top1", "train_images_per_s", "peak_mib", "params",
              "train_s"] + [f"recipe_{k}" for k in Recipe.__dataclass_fields__]
SUMMARY_FIELDS = ["variant", "kernel", "softmax_residual", "seeds", "top1_mean", "top1_std", "top1_minus_softmax",
                  "train_images_per_s", "peak_mib", "params"]
FIDELITY_FIELDS = ["kernel", "layer", "kl", "topk_overlap", "negative_mass", "images", "tokens", "top_k"]


@dataclass(frozen=True)
class StudyPlan:
    """How big a study is: canvases, recipe, images for the fidelity maps."""
    train: int
    test: int
    recipe: Recipe
    fidelity_images: int
    spec: PointerSpec = PointerSpec()


FULL = StudyPlan(train=6000, test=2000, recipe=Recipe(), fidelity_images=64)
SMALL = StudyPlan(train=64, test=32, recipe=Recipe(epochs=1), fidelity_images=4)


def make_data(plan: StudyPlan, root: str | None = None) -> Data:
    """The plan's training and test canvases (deterministic: seed 0 of each split)."""
    train = make_pointer_canvases(*load_fashion_mnist("train", root), plan.train, split="train", spec=plan.spec)
    test = make_pointer_canvases(*load_fashion_mnist("test", root), plan.test, split="test", spec=plan.spec)
    return Data(*train, *test, num_classes=len(plan.spec.classes))


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: Sequence[dict]) -> tuple[list[dict], str]:
    """One row per variant (in the order of ``runs``) and the control's verdict line."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    rows = []
    for variant, rs in by.items():
        kernel, residual = parse_variant(variant)
        top1 = [float(r["top1"]) for r in rs]
        mems = [float(r["peak_mib"]) for r in rs if r["peak_mib"] not in (None, "")]
        rows.append(dict(variant=variant, kernel=kernel, softmax_residual=int(residual), seeds=len(rs),
                         top1_mean=statistics.fmean(top1), top1_std=_std(top1),
                         train_images_per_s=statistics.fmean(float(r["train_images_per_s"]) for r in rs),
                         peak_mib=statistics.fmean(mems) if mems else None, params=int(rs[0]["params"])))
    soft = next((r for r in rows if r["variant"] == "softmax"), None)
    for r in rows:
        r["top1_minus_softmax"] = None if soft is None else r["top1_mean"] - soft["top1_mean"]
    ctrl = next((r for r in rows if r["variant"] == CONTROL), None)
    if soft is None or ctrl is None:
        return rows, "control check: needs both softmax and the control"
    gap, spread = soft["top1_mean"] - ctrl["top1_mean"], max(soft["top1_std"], ctrl["top1_std"])
    if min(soft["seeds"], ctrl["seeds"]) < 2:
        verdict = "one seed: no spread to compare with (use --seeds 2 or more)"
    else:
        verdict = "attention matters" if gap > spread else "NOT shown that attention matters"
    return rows, (f"control check: softmax {soft['top1_mean']:.2f} - control {ctrl['top1_mean']:.2f} = {gap:.2f} "
                  f"points vs seed spread (largest std) {spread:.2f}: {verdict}")


def plot_study(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Top-1 mean ± std, training images/s and peak memory per variant (Tables 2 and 3 as bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..bench.measure import save_figure

    names = [r["variant"] for r in rows]
    colours = ["tab:grey" if r["variant"] == CONTROL else "tab:orange" if r["softmax_residual"] else
               "tab:red" if r["kernel"] == "softmax" else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.28 * len(rows) + 1.6), sharey=True)
    axes[0].barh(names, [r["top1_mean"] for r in rows], xerr=[r["top1_std"] for r in rows], color=colours,
                 capsize=2)
    axes[0].set(xlabel="test top-1 (%), mean ± std over seeds")
    lo = min(r["top1_mean"] - r["top1_std"] for r in rows)
    axes[0].set_xlim(max(0.0, lo - 5), 100)
    axes[1].barh(names, [r["train_images_per_s"] for r in rows], color=colours)
    axes[1].set(xlabel="training images/s")
    axes[2].barh(names, [r["peak_mib"] or 0.0 for r in rows], color=colours)
    axes[2].set(xlabel="peak MiB of one training step")
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, title=title)


_WORKER: dict = {}


def _init_worker(data: Data, recipe: Recipe, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(data=data, recipe=recipe)


def _worker_run(job: tuple[str, int]) -> tuple[dict, dict | None]:
    row, net = run_one(*job, _WORKER["data"], _WORKER["recipe"])
    return row, (net.state_dict() if job == ("softmax", 0) else None)  # only the fidelity needs weights back


def _run_jobs(jobs: list[tuple[str, int]], data: Data, recipe: Recipe, workers: int, threads: int | None):
    """(row, trained net or None) of every (variant, seed), in order; in ``workers`` processes when > 1."""
    if workers <= 1:
        if threads:
            torch.set_num_threads(threads)
        yield from (run_one(variant, seed, data, recipe) for variant, seed in jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(data, recipe, threads or 1)) as pool:
        for (variant, seed), (row, state) in zip(jobs, pool.map(_worker_run, jobs)):
            net = None
            if state is not None:
                net = build_net(variant, recipe, data.train_x.shape[-1], data.num_classes)
                net.load_state_dict(state)
            yield row, net


def _marker_query(canvas: torch.Tensor, spec: PointerSpec, grid: int) -> int:
    """The token at the outer corner of the marked cell of one canvas (1, S, S)."""
    def brightness(cell: int) -> float:
        return sum(float(canvas[0, rows, cols].float().mean()) for rows, cols in marker_slices(spec, cell))

    r, c = divmod(max(range(4), key=brightness), 2)
    return (r * (grid - 1)) * grid + c * (grid - 1)


def _fidelity(net, data: Data, plan: StudyPlan, kernels: Sequence[str], out: Path, plots: bool,
              log: Callable[[str], None]) -> list[Path]:
    from ..viz import attention_rows, plot_attention_maps
    from .fidelity import capture_qk
    from .runs import _to_input

    x = _to_input(data.test_x[:plan.fidelity_images])
    rows = fidelity_rows(net, x, kernels)
    header = (f"fidelity to softmax: q, k of the trained softmax StudyNet (seed 0) on {len(x)} test canvases; "
              f"kernels at their initial parameters; {device_line(torch.device('cpu'))}")
    paths = [write_csv(rows, out / "kernel_fidelity.csv", header, FIDELITY_FIELDS)]
    for r in rows:
        if r["layer"] == "mean":
            log(f"  fidelity {r['kernel']:16s} KL {r['kl']:.4f}  top-{r['top_k']} overlap {r['topk_overlap']:.3f}")
    if plots:
        paths.append(plot_fidelity(rows, out / "kernel_fidelity.png", title=header[:120]))
        q, k = capture_qk(net, x[:1])[-1]
        grid = round(q.shape[2] ** 0.5)
        query = _marker_query(data.test_x[0], plan.spec, grid)
        image = data.test_x[0].float().div(255).expand(3, -1, -1)
        paths.append(plot_attention_maps(image, attention_rows(q, k, query, kernels), (grid, grid), query,
                                         out / "kernel_fidelity_maps.png",
                                         title="last layer of the softmax StudyNet, the marker token's attention "
                                               f"(label: {_class_name(plan.spec, int(data.test_y[0]))})"))
    return paths


def _class_name(spec: PointerSpec, label: int) -> str:
    from ..constants import FASHION_MNIST_CLASSES
    return FASHION_MNIST_CLASSES[sorted(spec.classes)[label]]


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_study(kernels: Sequence[str] = STUDY_KERNELS, seeds: int = 3, out: str | Path = "results/kernel_study",
              *, small: bool = False, control: bool = True, residual_kernels: Sequence[str] = ("qt",),
              data_root: str | None = None, epochs: int | None = None, workers: int = 1,
              threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, list[Path] | str]:
    """Train every variant with seeds 0..seeds-1, write the CSVs and figures (module docstring); returns the paths
    written and the control's verdict line. ``workers`` > 1 trains that many runs at once in separate processes
    (``threads`` torch threads each, default 1): small networks use one core each better than two threads share
    them."""
    from ..attention import list_kernels

    bad = [k for k in [*kernels, *residual_kernels] if k not in list_kernels()]
    if bad:
        raise ValueError(f"unknown kernel(s) {', '.join(bad)}; use {', '.join(list_kernels())}")
    if seeds < 1 or workers < 1:
        raise ValueError(f"seeds ({seeds}) and workers ({workers}) must be at least 1")
    if "softmax" in residual_kernels:
        raise ValueError("softmax cannot take a softmax residual: give linear kernels to --residual-kernels")
    plan = SMALL if small else FULL
    if epochs is not None:
        plan = replace(plan, recipe=replace(plan.recipe, epochs=epochs))
    out = Path(out)
    t0 = time.perf_counter()
    data = make_data(plan, data_root)
    log(f"canvases: {plan.train} train, {plan.test} test, {plan.spec.size} px ({time.perf_counter() - t0:.1f} s)")
    variants = [*kernels, *([CONTROL] if control else []), *(variant_name(k, True) for k in residual_kernels)]
    machine = device_line(torch.device("cpu"))
    runs, softmax_net = [], None
    jobs = [(variant, seed) for variant in variants for seed in range(seeds)]
    for (variant, seed), (row, net) in zip(jobs, _run_jobs(jobs, data, plan.recipe, workers, threads)):
        runs.append(row)
        if variant == "softmax" and seed == 0:
            softmax_net = net
        log(f"{variant:28s} seed {seed}: top-1 {row['top1']:6.2f}%  {row['train_images_per_s']:7.1f} img/s  "
            f"peak {row['peak_mib'] or float('nan'):7.1f} MiB  ({time.perf_counter() - t0:.0f} s)")
        write_csv(runs, out / "kernel_study_runs.csv", f"kernel study runs; {machine}; {workers} worker(s) x "
                  f"{threads or torch.get_num_threads()} thread(s)", RUN_FIELDS)
    summary, verdict = summarise(runs)
    log(verdict)
    header = (f"kernel study: {plan.train} train / {plan.test} test pointer canvases, {seeds} seeds; {verdict}; "
              f"{machine}")
    paths = [out / "kernel_study_runs.csv", write_csv(summary, out / "kernel_study.csv", header, SUMMARY_FIELDS)]
    plots = _can_plot()
    if plots:
        paths.append(plot_study(summary, out / "kernel_study.png", title=header[:150]))
    else:
        log("matplotlib is missing (pip install 'qtvit[plot]'): CSVs only, no figures")
    if softmax_net is not None:
        paths += _fidelity(softmax_net, data, plan, [k for k in kernels], out, plots, log)
    log(f"study done in {time.perf_counter() - t0:.0f} s")
    return {"paths": paths, "verdict": verdict}
