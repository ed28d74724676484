"""Model benchmark: batch-1 latency and batch-32 throughput of whole networks against the input resolution.

    qtvit benchmark models                                   # defaults below, CPU fp32, ~15 min on 2 cores
    qtvit benchmark models --models qtvit_1 efficientvit_b1 --sizes 224 512x1024 --modes eager fused
    qtvit benchmark models --models qtvit_seg_1_cityscapes qtvit_seg_1_cityscapes:kernel=softmax --sizes 1024x2048
    qtvit benchmark models --goals                           # the side-by-side speed goals (ABAB, median of 9)
    qtvit benchmark models --profile qtvit_1 efficientvit_b1 --sizes 224 1024   # top ops by self CPU time

Modes (``qtvit.tools.bench.paths``): ``eager`` (the model as built), ``fused`` (the inference form for the size),
``fused-dynamic`` (the inference form valid for every size), ``jit`` (traced, ``optimize_for_inference``),
``compile`` (``torch.compile`` of the inference form, compiled per size; its compile time is the ``setup_s``
column), ``onnxruntime`` and ``onnxruntime-nospin`` (the dynamic ONNX graph of ``qtvit export``, one export per
model, CPU execution provider, idle threads spinning or sleeping), ``onnxruntime-int8`` (``qtvit export --quantize
int8``, calibrated on random inputs: for speed only), ``cudagraph`` (CUDA: the fused form replayed from a CUDA
graph). ``--side-by-side`` compares qtvit_1's paths with efficientvit_b1, the official code and the sgemm floor
(``qtvit.tools.bench.compare``). Detectors (``--detection``; ``NAME.backbone``, a detector's backbone+FPN):
``qtvit.tools.bench.detection``.

On a GPU: ``--device cuda --dtype float16`` (or bfloat16); the default modes there are eager, fused and cudagraph:

    qtvit benchmark models --device cuda --dtype bfloat16 --models qtvit_1 efficientvit_b1 --sizes 224 1024

Per point: the median over ``--repeats`` runs after one warm-up call (no more runs past ``--budget`` seconds, at
least 3), the peak memory over the warm-up call (``qtvit.tools.measure.peak_memory_bytes``: extra resident memory
on CPU, so it includes one-time buffers) and, per model and size, the FLOPs of one image counted by
``torch.utils.flop_counter`` (2 per multiply-add; ``gmacs`` = half, the "FLOPs" of papers).

Defaults (all seven models, six sizes, batch 1 and 32, eager/fused/onnxruntime, 3 runs, 4 s guard) take about
15 minutes on 2 CPU cores; ``compile`` is opt-in (``--modes ... compile``) and measured at ``--compile-sizes``.

Guard: a point whose first call takes longer than ``--max-call`` seconds is kept as a one-run point and larger
sizes of that model, mode and batch are skipped; a batch-B point whose batch-1 time times B would exceed
``--max-call`` is skipped without running. Skipped points are listed at the end and in the CSV's ``note``.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..._utils import did_you_mean, parse_model_spec, parse_size
from ...models import inference_form, list_models
from ...options import positive_float, positive_int  # checked numbers: a bad value is exit code 2
from ..measure import build_extensions, failure_note, median_time, peak_memory_bytes
from ..results import device_line, save_figure
from .paths import MODES, Forms, build_model, count_flops, interleaved_times
from .paths import runner as _runner
from .args import check_device, check_model_args, check_outputs, size_arg
from .detection import add_arguments as add_detection_arguments, apply_preset, split_part
from ..results import write_csv as write_results_csv

DEFAULT_MODELS = ["efficientvit_b1", "efficientvit_b2", "efficientvit_b3", "qtvit_1", "qtvit_2", "qtvit_3",
                  "l2vit_tiny"]
DEFAULT_SIZES = ["224", "384", "512", "768", "1024", "512x1024"]
FIELDS = ["model", "params_m", "height", "width", "batch", "mode", "dtype", "device", "time_ms", "runs",
          "images_per_s", "gflops", "gmacs", "peak_mib", "setup_s", "note"]


def size_label(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


@dataclass
class _Plan:
    """What every point of one ``benchmark_models`` call shares."""

    sizes: list[tuple[int, int]]
    batches: list[int]
    compile_sizes: set[tuple[int, int]]
    repeats: int
    budget_s: float
    max_call_s: float
    memory: bool
    device: torch.device
    dtype: torch.dtype


def _new_row(model: str, params_m: float, h: int, w: int, batch: int, mode: str, flops: int | None,
             plan: _Plan) -> dict:
    row = dict.fromkeys(FIELDS, "")
    row.update(model=model, params_m=params_m, height=h, width=w, batch=batch, mode=mode,
               dtype=str(plan.dtype).removeprefix("torch."), device=plan.device.type, runs=0)
    if flops is not None:
        row.update(gflops=round(flops / 1e9, 4), gmacs=round(flops / 2e9, 4))
    return row


def _skip_note(plan: _Plan, stopped: dict[int, tuple[int, str]], si: int, batch: int, mode: str,
               hw: tuple[int, int], batch1_s: float) -> str:
    """Why the point is not run ("" to run it); records a batch estimated too slow in ``stopped``."""
    est = batch1_s * batch
    if batch in stopped and si >= stopped[batch][0]:
        return stopped[batch][1]
    if mode == "compile" and hw not in plan.compile_sizes:
        return "skipped: not in compile_sizes (compiling takes about a minute per shape)"
    if batch > 1 and est > plan.max_call_s:
        stopped[batch] = (si + 1, f"skipped: estimated over {plan.max_call_s:g} s per call at a smaller size")
        return f"skipped: about {est:.0f} s per call (batch-1 time x {batch}) > max-call"
    return ""


def _measure(fn: Callable[[], None], plan: _Plan) -> tuple[float, int, int | None, bool]:
    """(seconds, runs, peak bytes, too slow): the first call is the warm-up, the guard and the memory measure."""
    device = plan.device
    t0 = time.perf_counter()
    mem = peak_memory_bytes(fn, device) if plan.memory else None
    if not plan.memory:
        fn()
    first = time.perf_counter() - t0
    if first > plan.max_call_s:  # (on CUDA, peak_memory_bytes synchronises after the call)
        return first, 1, mem, True
    t, times = median_time(fn, device, repeats=plan.repeats, warmup=0, budget_s=plan.budget_s)
    return t, len(times), mem, False


def _mode_rows(name: str, params_m: float, mode: str, forms: Forms, plan: _Plan,
               flops_of: Callable[[int, int], int | None], on_row: Callable[[dict], None] | None) -> list[dict]:
    """The rows of one model in one mode, smallest size first, skipping what the guard rules out."""
    stopped: dict[int, tuple[int, str]] = {}  # batch -> (first size index to skip, why)
    batch1: dict[tuple[int, int], float] = {}
    rows = []
    for si, (h, w) in enumerate(plan.sizes):
        flops = flops_of(h, w)
        for batch in plan.batches:
            row = _new_row(name, params_m, h, w, batch, mode, flops, plan)
            row["note"] = _skip_note(plan, stopped, si, batch, mode, (h, w), batch1.get((h, w), 0.0))
            if not row["note"]:
                try:
                    fn, setup = forms.build(mode, h, w, batch)
                    t, runs, mem, too_slow = _measure(fn, plan)
                except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as e:
                    # one failing path (a compiler error, memory) is a result to report, not the end of the run
                    row["note"] = failure_note(e, plan.device)
                    rows.append(row)
                    if on_row:
                        on_row(row)
                    continue
                finally:
                    fn = None
                if too_slow:
                    row["note"] = f"one run: {t:.0f} s > max-call {plan.max_call_s:g} s; larger sizes skipped"
                    for b in plan.batches:  # larger sizes, and larger batches, would take longer still
                        if b >= batch and b not in stopped:
                            stopped[b] = (si + 1, f"skipped: a smaller size took over {plan.max_call_s:g} s per call")
                if batch == 1:
                    batch1[(h, w)] = t
                row.update(time_ms=round(t * 1e3, 3), runs=runs, images_per_s=round(batch / t, 2),
                           peak_mib="" if mem is None else round(mem / 2 ** 20, 1),
                           setup_s=round(setup, 2) if setup else "", note=row["note"] or forms.note)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def benchmark_models(
    models: Iterable[str],
    sizes: Iterable[str | int | Sequence[int]],
    *,
    batch_sizes: Iterable[int] = (1, 32),
    modes: Iterable[str] = ("eager", "fused"),
    repeats: int = 5,
    budget_s: float = 10.0,
    max_call_s: float = 20.0,
    compile_sizes: Iterable[str | int | Sequence[int]] | None = None,
    flops: bool = True,
    memory: bool = True,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Time every (model, mode, size, batch) point; fields are ``FIELDS`` (see the module docstring).

    ``compile_sizes``: the sizes at which the ``compile`` mode is measured (default: all). ``device``, ``dtype``:
    where and in which precision the models run (the weights cast after fusing; onnxruntime modes: CPU float32 only).
    """

    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    size_list = sorted((parse_size(s) for s in sizes), key=lambda hw: (hw[0] * hw[1], hw))
    batch_list = sorted(set(int(b) for b in batch_sizes))
    if not size_list or not batch_list or min(batch_list) < 1:
        raise ValueError("need at least one size and positive batch sizes")
    compile_set = set(size_list) if compile_sizes is None else {parse_size(s) for s in compile_sizes}
    device = torch.device(device)
    build_extensions(device)
    if device.type == "cpu" and dtype != torch.float32:
        # reduced precision on CPU runs through slow generic kernels: a number nobody deploys
        raise ValueError(f"{dtype} on the CPU is not a deployment path; benchmark float32 there "
                         "(or onnxruntime-int8), float16/bfloat16 on CUDA")
    for mode in modes:
        if mode.startswith("onnxruntime") and (device.type != "cpu" or dtype != torch.float32):
            raise ValueError(f"mode {mode!r} runs on the CPU in float32 only; drop it with --device "
                             f"{device.type} --dtype {str(dtype).removeprefix('torch.')}")
        if mode == "cudagraph" and device.type != "cuda":
            raise ValueError("mode 'cudagraph' needs --device cuda")
    plan = _Plan(size_list, batch_list, compile_set, repeats, budget_s, max_call_s, memory, device, dtype)
    rows: list[dict] = []
    for name in models:  # a name, or a spec with constructor arguments: "qtvit_seg_1_cityscapes:kernel=softmax"
        torch.manual_seed(0)
        model = build_model(name, num_classes).to(device)
        params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        in_chans = getattr(model, "in_chans", 3)

        @functools.lru_cache(maxsize=None)
        def flops_of(h: int, w: int, model=model, in_chans=in_chans) -> int | None:
            return count_flops(model, (1, in_chans, h, w)) if flops else None

        with tempfile.TemporaryDirectory() as tmp:
            forms = Forms(model, Path(tmp), device=device, dtype=dtype)
            for mode in modes:
                rows += _mode_rows(name, params_m, mode, forms, plan, flops_of, on_row)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# The speed goals: side by side, interleaved
# --------------------------------------------------------------------------------------------------------------------
def benchmark_interleaved(models: Sequence[str], size: str | int | Sequence[int] = "224", *, repeats: int = 7,
                          num_classes: int | None = None) -> list[dict]:
    """Batch-1 eager latency of several models at one size, measured in turns (A B C A B C ...): the fairest
    comparison on a noisy machine; rows in the ``FIELDS`` format (mode ``eager``), e.g. for the Pareto plot."""

    h, w = parse_size(size)
    build_extensions(torch.device("cpu"))
    built = {}
    for name in models:
        torch.manual_seed(0)
        built[name] = build_model(name, num_classes)
    fns = {n: _runner(m, torch.randn(1, getattr(m, "in_chans", 3), h, w)) for n, m in built.items()}
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    rows = []
    for name, m in built.items():
        t = statistics.median(times[name])
        flops = count_flops(m, (1, getattr(m, "in_chans", 3), h, w))
        rows.append(dict(model=name, params_m=round(sum(p.numel() for p in m.parameters()) / 1e6, 3), height=h,
                         width=w, batch=1, mode="eager", dtype="float32", device="cpu", time_ms=round(t * 1e3, 3),
                         runs=repeats, images_per_s=round(1 / t, 2), gflops=round(flops / 1e9, 4),
                         gmacs=round(flops / 2e9, 4), peak_mib="", setup_s="",
                         note=f"interleaved with {len(models) - 1} other models"))
    return rows


def speed_goals(repeats: int = 9, sizes: Sequence[int] = (224, 1024), fused_size: int = 512,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """The issue's goals, fp32 batch 1 on this CPU: qtvit_1 / efficientvit_b1 eager at each of ``sizes`` (<= 1.10)
    and qtvit_1 eager / fused at ``fused_size`` (>= 1.3), each pair interleaved, medians of ``repeats`` runs."""

    torch.manual_seed(0)
    qt, b1 = build_model("qtvit_1"), build_model("efficientvit_b1")
    rows = []
    pairs = [(f"{s}", {"qtvit_1 eager": (qt, s), "efficientvit_b1 eager": (b1, s)}, "<= 1.10") for s in sizes]
    pairs.append((f"{fused_size}", {"qtvit_1 eager": (qt, fused_size),
                                    "qtvit_1 fused": (inference_form(qt, (fused_size, fused_size)), fused_size)},
                  ">= 1.30"))
    for label, pair, goal in pairs:
        fns = {k: _runner(m, torch.randn(1, 3, s, s)) for k, (m, s) in pair.items()}
        times = interleaved_times(fns, repeats=repeats)
        (ka, ta), (kb, tb) = ((k, statistics.median(v)) for k, v in times.items())
        ratio = ta / tb
        ok = ratio <= 1.10 if goal.startswith("<=") else ratio >= 1.30
        row = dict(size=label, a=ka, a_ms=round(ta * 1e3, 3), b=kb, b_ms=round(tb * 1e3, 3), ratio=round(ratio, 3),
                   goal=f"a/b {goal}", met=ok, runs=repeats,
                   a_spread_ms=f"{min(times[ka]) * 1e3:.1f}-{max(times[ka]) * 1e3:.1f}",
                   b_spread_ms=f"{min(times[kb]) * 1e3:.1f}-{max(times[kb]) * 1e3:.1f}")
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def profile_table(name: str, size: int | Sequence[int], *, fused: bool = False, runs: int = 3,
                  top: int = 15) -> str:
    """torch.profiler's top ops by self CPU time of ``runs`` batch-1 forwards of model ``name``."""
    from torch.profiler import ProfilerActivity, profile

    h, w = parse_size(size if not isinstance(size, int) else str(size))
    torch.manual_seed(0)
    model = build_model(name)
    if fused:
        model = inference_form(model, (h, w))
    fn = _runner(model, torch.randn(1, 3, h, w))
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


# --------------------------------------------------------------------------------------------------------------------
# CSV and plot
# --------------------------------------------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path, header: str, fields: Sequence[str] = FIELDS) -> None:
    """``measure.write_csv`` with this benchmark's columns by default."""
    write_results_csv(rows, path, header, fields)


def plot(rows: list[dict], path: Path, *, title: str = "") -> None:
    """Batch-1 latency (top) and largest-batch throughput (bottom) against megapixels, one column per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["time_ms"] not in ("", None)]
    modes = list(dict.fromkeys(r["mode"] for r in done))
    batches = sorted({int(r["batch"]) for r in done})
    if not done:
        raise ValueError("no measured points to plot")
    panels = [(batches[0], "latency (ms)")] + ([(batches[-1], "images / s")] if len(batches) > 1 else [])
    fig, axes = plt.subplots(len(panels), len(modes), figsize=(5 * len(modes), 4.2 * len(panels)), squeeze=False)
    names = list(dict.fromkeys(r["model"] for r in done))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for j, mode in enumerate(modes):
        for i, (batch, ylabel) in enumerate(panels):
            ax = axes[i][j]
            for name in names:
                pts = sorted((int(r["height"]) * int(r["width"]) / 1e6, float(r["time_ms"]))
                             for r in done if r["model"] == name and r["mode"] == mode and int(r["batch"]) == batch)
                if not pts:
                    continue
                ys = [t if i == 0 else batch / t * 1e3 for _, t in pts]
                ax.plot([p for p, _ in pts], ys, marker="o", ms=3, color=colors[name],
                        ls="-" if name.startswith("qtvit") else "--", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set(xlabel="input megapixels (224² = 0.05, 1024² = 1.05)", ylabel=ylabel,
                   title=f"{mode}, batch {batch}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path, dpi=110, title=title)


def markdown_table(rows: list[dict], batch: int = 1, value: str = "time_ms") -> str:
    """A model x size table of ``value`` per mode, for the README."""
    done = [r for r in rows if int(r["batch"]) == batch]
    sizes = list(dict.fromkeys(size_label(int(r["height"]), int(r["width"])) for r in sorted(
        done, key=lambda r: int(r["height"]) * int(r["width"]))))
    lines = ["| model | mode | " + " | ".join(sizes) + " |", "|---|---|" + "---:|" * len(sizes)]
    keys = list(dict.fromkeys((r["model"], r["mode"]) for r in done))
    for model, mode in keys:
        cells = []
        for s in sizes:
            r = next((r for r in done if r["model"] == model and r["mode"] == mode
                      and size_label(int(r["height"]), int(r["width"])) == s), None)
            v = r.get(value, "") if r else ""
            cells.append("skip" if v in ("", None) else f"{float(v):.1f}" if value != "images_per_s" else
                         f"{float(v):.2f}")
        lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="latency / throughput / FLOPs / memory of models against resolution",
                              description="Latency, throughput, MACs and peak memory of models against input size, "
                                          "in each inference mode (--modes); writes a CSV and a PNG (--out). Modes, "
                                          "method and results: docs/benchmarks.md")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME[:KEY=VALUE]",
                   help="model names, each optionally with constructor arguments, e.g. qtvit_seg_1_cityscapes:"
                        "kernel=softmax; a detector's backbone+FPN: NAME.backbone, e.g. maskrcnn_qtvit_1.backbone")
    p.add_argument("--sizes", nargs="+", type=size_arg, default=DEFAULT_SIZES, metavar="S",
                   help="sides or HxW, e.g. 224 512x1024")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 32], metavar="B", help="batch sizes")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="default: eager fused onnxruntime (on CUDA: eager fused cudagraph); add compile for "
                        "torch.compile (slow to compile); the modes are described in qtvit.tools.bench.paths")
    p.add_argument("--compile-sizes", nargs="+", type=size_arg, default=["224", "512"], metavar="S",
                   help="sizes at which the compile mode is measured (each shape compiles for about a minute)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed runs per point after a warm-up; the median is kept")
    p.add_argument("--budget", type=positive_float, default=2.0, help="seconds per point after which no more runs are "
                                                             "taken (at least 3)")
    p.add_argument("--max-call", type=positive_float, default=4.0,
                   help="seconds per call above which larger sizes are skipped (and batch points estimated above it)")
    p.add_argument("--no-flops", action="store_true", help="do not count MACs (counting takes a forward pass)")
    p.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="weights and inputs (float16/bfloat16 on CUDA only)")
    p.add_argument("--out", type=Path, default=Path("results/models_cpu.csv"), help="the CSV written")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: the CSV's path with .png)")
    # The project's own speed checks (qtvit_1 against efficientvit_b1, interleaved; docs/benchmarks.md), not options
    # a user needs: hidden from --help.
    p.add_argument("--goals", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--goal-repeats", type=positive_int, default=9, help=argparse.SUPPRESS)
    p.add_argument("--side-by-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--official", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--interleaved", action="store_true",
                   help="only batch-1 eager latency of --models at the first of --sizes, measured in turns "
                        "(--repeats each); for the Pareto plot")
    p.add_argument("--profile", nargs="+", default=None, metavar="NAME",
                   help="print torch.profiler's top ops (self CPU) for these models at --sizes, batch 1, then stop")
    add_detection_arguments(p)
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:

    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device, "models")
    apply_preset(args, device)
    known = list_models()
    for spec in (args.profile or []) + ([] if args.goals or args.profile else args.models):
        name = parse_model_spec(split_part(spec)[0])[0]
        if name not in known:
            raise SystemExit(f"qtvit benchmark models: unknown model {name!r}{did_you_mean(name, known)}; see "
                             "qtvit.list_models()")
    sizes = [parse_size(s) for s in args.sizes]  # checked by argparse (size_arg)
    check_outputs([args.out, args.plot or args.out.with_suffix(".png")], "models")
    check_model_args([] if args.goals or args.profile else args.models)
    line = device_line(device)
    print(f"# {line}")
    if args.profile:
        for name in args.profile:
            for h, w in sizes:
                print(f"\n## {name} at {size_label(h, w)}, batch 1, eager: top ops by self CPU time")
                print(profile_table(name, (h, w)))
        return 0
    if args.side_by_side:
        return _run_side_by_side(args, line)
    if args.goals:
        out = args.out if args.out != Path("results/models_cpu.csv") else Path("results/speed_goals_cpu.csv")

        def show_goal(r: dict) -> None:
            print(f"{r['size']:>5}: {r['a']} {r['a_ms']:.1f} ms / {r['b']} {r['b_ms']:.1f} ms = {r['ratio']:.3f} "
                  f"(goal {r['goal']}: {'met' if r['met'] else 'MISSED'})", flush=True)

        rows = speed_goals(repeats=args.goal_repeats, on_row=show_goal)
        write_csv(rows, out, line, fields=list(rows[0]))
        print(f"wrote {out}")
        return 0
    print(f"# one row per point as it is measured; the table goes to {args.out} and a plot beside it")
    print(f"{'model':<17} {'size':>9} {'B':>3} {'mode':<12}{'ms':>10} {'img/s':>9} {'GMACs':>8} {'MiB':>8}  note")
    if args.interleaved:
        rows = benchmark_interleaved(args.models, sizes[0], repeats=args.repeats)
        for r in rows:
            print(f"{r['model']:<17} {size_label(r['height'], r['width']):>9} {1:>3} {'eager':<12}{r['time_ms']:>10.1f}"
                  f" {r['images_per_s']:>9.1f} {r['gmacs']!s:>8} {'':>8}  {r['note']}")
        write_csv(rows, args.out, line)
        print(f"wrote {args.out}")
        return 0

    def show(r: dict) -> None:
        ms = f"{r['time_ms']:.1f}" if r["time_ms"] != "" else "-"
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] != "" else "-"
        # one space between every two columns, so that wide values (a long spec, 330 GMACs) never run together
        print(f"{r['model']:<17} {size_label(r['height'], r['width']):>9} {r['batch']:>3} {r['mode']:<12}{ms:>10} "
              f"{ips:>9} {r['gmacs']!s:>8} {r['peak_mib']!s:>8}  {r['note']}", flush=True)

    t0 = time.perf_counter()
    rows = benchmark_models(args.models, sizes, batch_sizes=args.batch_sizes,
                            modes=args.modes or (["eager", "fused", "onnxruntime"] if device.type == "cpu" else
                                                 ["eager", "fused", "cudagraph"]),
                            repeats=args.repeats, budget_s=args.budget, max_call_s=args.max_call,
                            compile_sizes=args.compile_sizes, device=device, dtype=getattr(torch, args.dtype),
                            flops=not args.no_flops, memory=not args.no_memory, on_row=show)
    write_csv(rows, args.out, line)
    print(f"wrote {args.out} ({len(rows)} rows in {time.perf_counter() - t0:.0f} s)")
    skipped = [r for r in rows if r["time_ms"] == ""]
    if skipped:
        print(f"{len(skipped)} points skipped by --max-call {args.max_call:g} s (see the note column)")
    png = args.plot or args.out.with_suffix(".png")
    try:
        plot(rows, png, title=line)
        print(f"wrote {png}")
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'qtvit[plot]')")
    return 0


def _run_side_by_side(args: argparse.Namespace, line: str) -> int:
    from .compare import DEFAULT_SIDE_MODES, format_row, side_by_side

    out = args.out if args.out != Path("results/models_cpu.csv") else Path("results/side_by_side_cpu.csv")
    rows = side_by_side(args.sizes, modes=args.modes or DEFAULT_SIDE_MODES, repeats=args.goal_repeats,
                        official=args.official, on_row=lambda r: print(format_row(r), flush=True))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(rows, out, line, fields=fields)
    print(f"wrote {out}")
    return 0
