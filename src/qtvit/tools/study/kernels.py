"""`qtvit study kernels`: every kernel trained in one architecture, under one recipe, over several seeds, on a
task where global context decides (``task.py``), against an attention-free control; then the kernels' fidelity to
softmax on the trained softmax model's q and k (``fidelity.py``).

Writes into ``--out``:
- ``kernel_study_runs.csv``: one row per (variant, seed), written after every run. A study resumes from it: runs
  already recorded for the same plan (``plan`` column: task, canvases and recipe) are not trained again, so a study
  can run in parts across sittings; a file of another plan is refused, not mixed in;
- ``kernel_study.csv``: one row per variant (``summary.py``): top-1 mean, std and 95 % interval over seeds, Welch's
  t-test p-values against softmax and the control, training images/s, peak memory of one training step,
  parameters, the seeds that learned the task and Fisher's test of their count; its first line is the control check;
- ``kernel_study.md``: the same as a markdown table;
- ``kernel_study.png``: the same as bars (matplotlib, the ``plot`` extra);
- ``softmax_seed0.pt``: the trained softmax net of seed 0 (state dict), which the fidelity maps read when resuming;
- ``kernel_fidelity.csv`` / ``kernel_fidelity.png``: KL and top-k overlap of each kernel's map against softmax's;
- ``kernel_fidelity_maps.png``: the marker token's attention in the last layer of the softmax model, under every
  kernel (QT-ViT Fig. 2 on a study canvas).
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..._io import atomic_write, write_text
from ...attention import list_kernels
from ..results import device_line, read_csv, write_csv
from ...data.fashion_mnist import load_fashion_mnist
from .fidelity import fidelity_rows, plot_fidelity
from .net import CONTROL
from .runs import Data, Recipe, Variant, build_net, run_one, study_device
from .summary import SUMMARY_FIELDS, learned_threshold, markdown_summary, plot_study, summarise
from .task import PointerSpec, make_pointer_canvases, marker_slices

__all__ = ["STUDY_KERNELS", "ROPE_KERNELS", "LONG_VARIANTS", "LONG_FACTOR", "StudyPlan", "FULL", "SMALL",
           "make_data", "plan_key", "study_variants", "run_study", "summarise"]

STUDY_KERNELS = tuple(list_kernels())  # every kernel of the zoo
ROPE_KERNELS = ("mala", "rala")  # also trained with their released RoPE (``+rope``)
LONG_VARIANTS = ("softmax", "relu", "qt", "qt_paper", CONTROL)  # also trained ``LONG_FACTOR`` times longer
LONG_FACTOR = 3
RUNS_CSV = "kernel_study_runs.csv"
SOFTMAX_WEIGHTS = "softmax_seed0.pt"

RUN_FIELDS = ["variant", "kernel", "softmax_residual", "seed", "top1", "val_top1", "diverged_at_step",
              "train_images_per_s", "peak_mib", "params", "train_s", "device", "threads", "machine",
              "plan"] + [f"recipe_{k}" for k in Recipe.__dataclass_fields__]
FIDELITY_FIELDS = ["kernel", "layer", "kl", "topk_overlap", "negative_mass", "images", "tokens", "top_k"]


@dataclass(frozen=True)
class StudyPlan:
    """How big a study is: canvases, recipe, images for the fidelity maps."""
    train: int
    test: int
    recipe: Recipe
    fidelity_images: int
    val: int = 2000
    spec: PointerSpec = PointerSpec()


VAL_EVERY = 6  # every 6th Fashion-MNIST training image is held out for the validation canvases
FULL = StudyPlan(train=6000, test=2000, recipe=Recipe(), fidelity_images=64)
SMALL = StudyPlan(train=64, test=32, recipe=Recipe(epochs=1), fidelity_images=4, val=32)


def make_data(plan: StudyPlan, root: str | None = None) -> Data:
    """The plan's training, validation and test canvases (deterministic: seed 0 of each split). Validation canvases
    are drawn from the Fashion-MNIST training images that no training canvas uses (every ``VAL_EVERY``-th), test
    canvases from the test images: design choices read validation top-1, never test top-1."""
    images, labels = load_fashion_mnist("train", root)
    held = torch.arange(len(labels)) % VAL_EVERY == VAL_EVERY - 1
    train = make_pointer_canvases(images[~held], labels[~held], plan.train, split="train", spec=plan.spec)
    val = make_pointer_canvases(images[held], labels[held], plan.val, split="val", spec=plan.spec)
    test = make_pointer_canvases(*load_fashion_mnist("test", root), plan.test, split="test", spec=plan.spec)
    return Data(*train, *test, num_classes=len(plan.spec.classes), val_x=val[0], val_y=val[1])


def plan_key(plan: StudyPlan) -> str:
    """A short fingerprint of what makes runs comparable: the task's settings, the canvases, the base recipe."""
    import hashlib

    what = repr((plan.spec, plan.train, plan.val, plan.test, plan.recipe))
    return hashlib.sha1(what.encode()).hexdigest()[:12]


def study_variants(kernels: Sequence[str], *, control: bool = True, rope_kernels: Sequence[str] = (),
                   residual_kernels: Sequence[str] = (), long_variants: Sequence[str] = (),
                   long_factor: int = LONG_FACTOR) -> list[str]:
    """The variant names of a study, in the order of its tables: kernels, +rope, the control, +softmax_residual,
    then the longer schedules (@<k>x)."""
    names = [*kernels, *(Variant(k, rope=True).name for k in rope_kernels), *([CONTROL] if control else []),
             *(Variant(k, residual=True).name for k in residual_kernels)]
    if long_factor > 1:
        names += [replace(Variant.parse(v), length=long_factor).name for v in long_variants]
    return list(dict.fromkeys(names))


def _check_variants(variants: Sequence[str], kernels: Sequence[str], rope_kernels: Sequence[str],
                    residual_kernels: Sequence[str]) -> None:
    known = list_kernels()
    bad = [k for k in [*kernels, *rope_kernels, *residual_kernels] if k not in known]
    bad += [v for v in variants if Variant.parse(v).kernel not in (*known, CONTROL)]
    if bad:
        raise ValueError(f"unknown kernel(s) {', '.join(dict.fromkeys(bad))}; use {', '.join(known)}")
    if "softmax" in residual_kernels:
        raise ValueError("softmax cannot take a softmax residual: give linear kernels to --residual-kernels")
    no_rope = [k for k in [*rope_kernels, *(Variant.parse(v).kernel for v in variants if Variant.parse(v).rope)]
               if k not in ROPE_KERNELS]
    if no_rope:
        raise ValueError(f"RoPE for {', '.join(dict.fromkeys(no_rope))}: only {', '.join(ROPE_KERNELS)} have a "
                         "released RoPE")


def _recorded(path: Path, key: str) -> list[dict]:
    """The runs already in ``path`` for plan ``key``; a file of another plan is an error (not mixed in)."""
    if not path.exists():
        return []
    rows = read_csv(path)
    other = sorted({r.get("plan") or "unrecorded: a first task version's file" for r in rows} - {key})
    if other:
        raise ValueError(f"{path} holds runs of another plan ({', '.join(other)}; this one is {key}: other canvases, "
                         "task version or recipe); give another --out, or move that file away to start afresh")
    return rows


_WORKER: dict = {}


def _exit_with(parent: int, every_s: float = 5.0) -> None:
    """End this worker once its parent is gone: a killed study must not leave runs training (the pool only stops a
    worker between jobs, and a job is minutes long)."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _init_worker(data: Data, recipe: Recipe, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(data=data, recipe=recipe)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _worker_run(job: tuple[str, int]) -> tuple[dict, dict | None]:
    row, net = run_one(*job, _WORKER["data"], _WORKER["recipe"])
    return row, (net.state_dict() if job == ("softmax", 0) else None)  # only the fidelity needs weights back


def _run_jobs(jobs: list[tuple[str, int]], data: Data, recipe: Recipe, workers: int, threads: int | None,
              device: torch.device):
    """(row, trained net or None) of every (variant, seed), in order; in ``workers`` processes when > 1 (CPU)."""
    if workers <= 1:
        if threads:
            torch.set_num_threads(threads)
        yield from (run_one(variant, seed, data, recipe, device) for variant, seed in jobs)
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


def _save_softmax(net, out: Path) -> None:
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_write(out / SOFTMAX_WEIGHTS, lambda tmp: torch.save(state, tmp))


def _load_softmax(plan: StudyPlan, data: Data, out: Path, log: Callable[[str], None]):
    """The softmax net of seed 0 saved by an earlier sitting (weights only), or None."""
    path = out / SOFTMAX_WEIGHTS
    if not path.exists():
        log(f"no {path}: the fidelity maps need softmax seed 0's weights; skipped")
        return None
    net = build_net("softmax", plan.recipe, data.train_x.shape[-1], data.num_classes)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


def _marker_query(canvas: torch.Tensor, spec: PointerSpec, grid: int) -> int:
    """The token at the outer corner of the marked cell of one canvas (1, S, S)."""
    def brightness(cell: int) -> float:
        return sum(float(canvas[0, rows, cols].float().mean()) for rows, cols in marker_slices(spec, cell))

    r, c = divmod(max(range(4), key=brightness), 2)
    return (r * (grid - 1)) * grid + c * (grid - 1)


def _fidelity(net, data: Data, plan: StudyPlan, kernels: Sequence[str], out: Path, plots: bool,
              log: Callable[[str], None]) -> list[Path]:
    from ..figures.attention import attention_rows, plot_attention_maps
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
    from ...constants import FASHION_MNIST_CLASSES
    return FASHION_MNIST_CLASSES[sorted(spec.classes)[label]]


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_study(kernels: Sequence[str] = STUDY_KERNELS, seeds: int = 5, out: str | Path = "results/kernel_study",
              *, small: bool = False, control: bool = True, residual_kernels: Sequence[str] = ("qt",),
              rope_kernels: Sequence[str] = ROPE_KERNELS, long_variants: Sequence[str] = LONG_VARIANTS,
              long_factor: int = LONG_FACTOR, data_root: str | None = None, epochs: int | None = None,
              plan: StudyPlan | None = None, workers: int = 1, threads: int | None = None, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict[str, list[Path] | str]:
    """Train every variant (``study_variants``) with seeds 0..seeds-1 that ``out`` has not recorded yet, then write
    the summary and figures (module docstring); returns the paths written and the control check's line.
    ``workers`` > 1 trains that many runs at once in separate processes (``threads`` torch threads each, default
    1; CPU only): small networks use one core each better than two threads share them. ``plan`` overrides
    ``small`` (FULL or SMALL), ``epochs`` its recipe's epochs."""
    variants = study_variants(kernels, control=control, rope_kernels=rope_kernels, residual_kernels=residual_kernels,
                              long_variants=long_variants, long_factor=long_factor)
    _check_variants(variants, kernels, rope_kernels, residual_kernels)
    dev = study_device(device)
    if seeds < 1 or workers < 1 or long_factor < 1:
        raise ValueError(f"seeds ({seeds}), workers ({workers}) and --long-factor ({long_factor}) must be at least 1")
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"--workers {workers} runs CPU processes; on {dev.type} train one run at a time (--workers 1)")
    plan = plan or (SMALL if small else FULL)
    if epochs is not None:
        plan = replace(plan, recipe=replace(plan.recipe, epochs=epochs))
    out, key, t0 = Path(out), plan_key(plan), time.perf_counter()
    runs = _recorded(out / RUNS_CSV, key)
    done = {(r["variant"], int(r["seed"])) for r in runs}
    jobs = [(v, s) for v in variants for s in range(seeds) if (v, s) not in done]
    data = make_data(plan, data_root)
    log(f"canvases: {plan.train} train, {plan.val} validation, {plan.test} test, {plan.spec.size} px "
        f"({time.perf_counter() - t0:.1f} s); plan {key}: {len(done)} runs already recorded, {len(jobs)} to train")
    if jobs:  # what this call will train, so a mistyped flag shows before hours of training
        log("to train: " + ", ".join(f"{v} x{n}" for v, n in Counter(v for v, _ in jobs).items()))
    machine = device_line(dev, threads=False)  # per row: a study run in parts may span machines
    softmax_net = None
    for (variant, seed), (row, net) in zip(jobs, _run_jobs(jobs, data, plan.recipe, workers, threads, dev)):
        runs.append(dict(row, plan=key, machine=machine))
        if variant == "softmax" and seed == 0:
            softmax_net = net.cpu()
            _save_softmax(net, out)
        got = (f"top-1 {row['top1']:6.2f}%" if row["top1"] is not None else
               f"DIVERGED (non-finite loss at step {row['diverged_at_step']})")
        log(f"{variant:28s} seed {seed}: {got}  {row['train_images_per_s']:7.1f} img/s  "
            f"peak {row['peak_mib'] or float('nan'):7.1f} MiB  trained in {row['train_s']:.0f} s "
            f"({time.perf_counter() - t0:.0f} s since the call began)")
        write_csv(runs, out / RUNS_CSV, f"kernel study runs; last sitting: {machine}, {workers} worker(s) x "
                  f"{row['threads']} thread(s)", RUN_FIELDS)
    order = {v: i for i, v in enumerate(variants)}
    chosen = sorted((r for r in runs if r["variant"] in order and int(r["seed"]) < seeds),
                    key=lambda r: (order[r["variant"]], int(r["seed"])))
    summary, verdict = summarise(chosen, test_canvases=plan.test)
    log(verdict)
    header = (f"kernel study: {plan.train} train / {plan.test} test pointer canvases ({plan.spec.placement} "
              f"placement), up to {seeds} seeds, p-values from Welch's t-test (learned: seeds above "
              f"{learned_threshold(plan.test):.1f} %, Fisher's exact test); {verdict}; {machine}")
    paths = [out / RUNS_CSV, write_csv(summary, out / "kernel_study.csv", header, SUMMARY_FIELDS),
             write_text(out / "kernel_study.md", f"<!-- {header} -->\n\n{markdown_summary(summary)}")]
    plots = _can_plot()
    if plots:
        paths.append(plot_study(summary, out / "kernel_study.png", title=header[:150], runs=chosen))
    else:
        log("matplotlib is missing (pip install 'qtvit[plot]'): CSVs only, no figures")
    if "softmax" in variants:
        softmax_net = softmax_net or _load_softmax(plan, data, out, log)
    if softmax_net is not None:
        paths += _fidelity(softmax_net, data, plan, [k for k in kernels if Variant.parse(k).kernel != CONTROL], out,
                           plots, log)
    log(f"study done in {time.perf_counter() - t0:.0f} s ({len(jobs)} runs trained in this sitting)")
    return {"paths": paths, "verdict": verdict}
