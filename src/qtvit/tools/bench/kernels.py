"""Kernel benchmark: time and peak memory of every attention kernel against the token count N.

    qtvit benchmark kernels                      # CPU, fp32, N = 256 … 65536, head dims 16 and 32
    qtvit benchmark kernels --kernels qt softmax --ns 1024 16384 --modes fwd fwd+bwd
    qtvit benchmark kernels --peer --kernels qt relu taylor2 --ns 4096 --head-dims 16 --heads 8   # + the 2 ratios

Writes a CSV (one row per kernel, N, head dim and mode) and, with matplotlib, a log-log PNG with the crossover of
each linear kernel against softmax marked. With ``--peer`` it also measures two speed ratios side by side (the two
calls alternate, median of ``--repeats`` each; fp32, 8 heads, head dim 16, batch 1) and writes them to
``<out>_ratios.csv``: taylor2 against the non-causal path of lucidrains' taylor-series-linear-attention feature map
at N = 16384 (speed-up, target >= 3), and qt against a minimal ReLU linear attention at N = 4096 (time ratio,
target <= 1.5), qt as users call it (on the CPU in inference: the fused kernel of ``attention.cpu_fused``) and, for
comparison, through the shared core's torch ops.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
from pathlib import Path
from typing import Callable, Iterable

import statistics
import time

import torch
import torch.nn.functional as F

from ...attention import cpu_fused, create_kernel, list_kernels
from ...options import positive_float, positive_int  # checked numbers: a bad value is exit code 2
from .args import check_device, check_outputs
from ..measure import build_extensions, failure_note, median_time, peak_memory_bytes, synchronize
from ..results import device_line, save_figure, write_csv

DEFAULT_NS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
FIELDS = ["kernel", "n", "head_dim", "heads", "batch", "dtype", "device", "mode", "path", "time_ms", "runs",
          "peak_mib", "feature_dim", "note"]
PEER = "taylor_series_linear_attention"


def _peer_fn(head_dim: int, heads: int, device: torch.device, dtype: torch.dtype) -> Callable | None:
    """lucidrains' taylor-series-linear-attention (the PyPI peer), non-causal, at matching heads and dims."""
    try:
        from taylor_series_linear_attention import TaylorSeriesLinearAttn
    except ImportError:
        return None
    attn = TaylorSeriesLinearAttn(dim=head_dim * heads, dim_head=head_dim, heads=heads).to(device, dtype)

    def run(x: torch.Tensor) -> torch.Tensor:  # the peer takes tokens (B, N, C) and includes its projections
        return attn(x)
    return run


RATIO_FIELDS = ["ratio", "kernel", "baseline", "n", "head_dim", "heads", "batch", "dtype", "device", "kernel_ms",
                "baseline_ms", "value", "target", "runs"]


def relu_minimal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The floor for a linear kernel: ReLU features, kᵀv, q(kᵀv)/(q·Σk) (no checks, no casts, no chunks)."""
    q, k = F.relu(q), F.relu(k)
    return (q @ (k.transpose(-1, -2) @ v)) / (q @ k.sum(dim=2, keepdim=True).transpose(-1, -2) + 1e-15)


def peer_taylor_core(head_dim: int, symmetric: bool = False) -> Callable | None:
    """The non-causal path of lucidrains' taylor-series-linear-attention on (B, H, N, d) q, k, v: its feature map
    ``second_taylor_expansion`` (1 + d + d² features; with ``symmetric``, its ``remove_even_power_dups`` option,
    1 + d + d(d+1)/2) of q·d^-½ and k, then kᵀv, 1/(q·Σk) and q·kv, as its TaylorSeriesLinearAttn does between
    its projections (default: not symmetric). None without the package."""
    try:
        from taylor_series_linear_attention.attention import second_taylor_expansion
    except ImportError:
        return None
    scale = head_dim ** -0.5

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        fq = second_taylor_expansion(q * scale, remove_even_power_dups=symmetric)
        fk = second_taylor_expansion(k, remove_even_power_dups=symmetric)
        kv = torch.einsum("bhnd,bhne->bhde", fk, v)
        inv = 1.0 / torch.einsum("bhnd,bhd->bhn", fq, fk.sum(dim=2)).clamp(min=1e-5)
        return torch.einsum("bhnd,bhde->bhne", fq, kv) * inv.unsqueeze(-1)
    return run


def paired_times(fa: Callable[[], object], fb: Callable[[], object], device: torch.device,
                 repeats: int) -> tuple[float, float]:
    """Median times of two calls measured side by side: they alternate, so both see the same machine load."""
    ta: list[float] = []
    tb: list[float] = []
    with torch.no_grad():
        fa(), fb()  # warm-up
        for _ in range(repeats):
            for f, times in ((fa, ta), (fb, tb)):
                synchronize(device)
                t0 = time.perf_counter()
                f()
                synchronize(device)
                times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def speed_ratios(device: str | torch.device = "cpu", *, repeats: int = 9, heads: int = 8, head_dim: int = 16,
                 taylor_n: int = 16384, qt_n: int = 4096, compiled: bool = False) -> list[dict]:
    """taylor2's speed-up over the peer's non-causal Taylor path, and qt's time over ``relu_minimal`` (fp32), qt as
    called (fused CPU kernel where it applies) and through torch ops (``cpu_fused.disabled``).
    ``compiled``: also qt over relu_minimal with both under ``torch.compile`` (inductor fuses the element-wise
    passes and the norms, which eager PyTorch runs one by one over N-sized temporaries)."""
    device = torch.device(device)
    rows = []
    cases = [("taylor2_vs_peer", "taylor2", PEER, taylor_n, peer_taylor_core(head_dim), ">= 3 (speed-up)"),
             ("taylor2_vs_peer_symmetric", "taylor2", PEER + "(remove_even_power_dups)", taylor_n,
              peer_taylor_core(head_dim, symmetric=True), "(speed-up; no target)"),
             ("qt_vs_relu_minimal", "qt", "relu_minimal", qt_n, relu_minimal, "<= 1.5 (time ratio)"),
             ("qt_core_vs_relu_minimal", "qt", "relu_minimal", qt_n, relu_minimal, "(time ratio; no target)")]
    if compiled:
        cases.append(("qt_vs_relu_minimal_compiled", "qt", "relu_minimal", qt_n, relu_minimal,
                      "<= 1.5 (time ratio, both torch.compile)"))
    for ratio, name, base_name, n, base, target in cases:
        if base is None:
            continue
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=g).to(device) for _ in range(3))
        module = create_kernel(name, head_dim=head_dim, num_heads=heads).to(device)
        if ratio.startswith("qt_core"):
            name = "qt (torch ops, no fused CPU kernel)"
        if ratio.endswith("_compiled"):  # static shapes: one compilation each, before the timed calls
            _allow_recompiles(64)
            module, base = torch.compile(module, dynamic=False), torch.compile(base, dynamic=False)
            base_name = f"{base_name} (compiled)"
            name = f"{name} (compiled)"
        with cpu_fused.disabled() if ratio.startswith("qt_core") else contextlib.nullcontext():
            t_kernel, t_base = paired_times(lambda: module(q, k, v), lambda: base(q, k, v), device, repeats)
        value = t_base / t_kernel if ratio.startswith("taylor2") else t_kernel / t_base
        rows.append(dict(ratio=ratio, kernel=name, baseline=base_name, n=n, head_dim=head_dim, heads=heads, batch=1,
                         dtype="float32", device=device.type, kernel_ms=round(t_kernel * 1e3, 4),
                         baseline_ms=round(t_base * 1e3, 4), value=round(value, 3), target=target, runs=repeats))
    return rows


def _allow_recompiles(n: int) -> None:
    """Every kernel shares one ``forward`` code object (``AttentionKernel.forward``), and dynamo's recompile limit
    (8 by default) counts per code object: past it, compiled kernels silently run eagerly. Raise it for a
    benchmark that compiles many kernels, modes (grad on/off) and sizes."""
    import torch._dynamo

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), n))


def benchmark_kernels(
    kernels: Iterable[str], ns: Iterable[int], *, head_dims: Iterable[int] = (16, 32), heads: int = 4,
    batch: int = 1, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    modes: Iterable[str] = ("fwd",), repeats: int = 5, budget_s: float = 5.0, max_call_s: float = 20.0,
    peer: bool = False, compiled: bool = False, on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Measure every (head dim, N, kernel, mode); a kernel slower than ``max_call_s`` per call skips larger N.
    ``compiled``: each kernel also under ``torch.compile`` (rows with ``path`` "compile"; one compilation per
    kernel and mode, then a second one with dynamic N when N changes, so later sizes reuse it)."""
    device = torch.device(device)
    build_extensions(device)
    kernels, modes = list(kernels), list(modes)  # iterated once per head dim and per N
    rows: list[dict] = []
    if compiled:
        _allow_recompiles(8 * len(kernels) * len(modes))
    for d in head_dims:
        too_slow: set[tuple[str, str, str]] = set()
        modules: dict[tuple[str, str], Callable] = {}
        for name in kernels:
            modules[name, "eager"] = create_kernel(name, head_dim=d, num_heads=heads).to(device)
            if compiled:
                modules[name, "compile"] = torch.compile(modules[name, "eager"])
        peer_fn = _peer_fn(d, heads, device, dtype) if peer else None
        if peer_fn is not None:
            modules[PEER, "eager"] = peer_fn
        for n in ns:
            g = torch.Generator().manual_seed(n)
            q, k, v = (torch.randn(batch, heads, n, d, generator=g).to(device, dtype) for _ in range(3))
            x = torch.randn(batch, n, heads * d, generator=g).to(device, dtype)
            for (name, path), module in modules.items():
                fd = getattr(modules[name, "eager"], "feature_dim", None) or ""
                inputs: tuple = (x,) if name == PEER else (q, k, v)
                for mode in modes:
                    row = dict(kernel=name, n=n, head_dim=d, heads=heads, batch=batch, dtype=str(dtype).split(".")[-1],
                               device=device.type, mode=mode, path=path, feature_dim=fd, note="")
                    if (name, mode, path) in too_slow:
                        continue
                    fn = _call(module, inputs, backward=(mode == "fwd+bwd"))
                    row.update(_measure_point(fn, device, compiled=path == "compile", repeats=repeats,
                                              budget_s=budget_s, max_call_s=max_call_s))
                    if row["note"]:  # too slow or failed: larger N would be too
                        too_slow.add((name, mode, path))
                    rows.append(row)
                    if on_row:
                        on_row(row)
    return rows


def _measure_point(fn: Callable[[], None], device: torch.device, *, compiled: bool, repeats: int, budget_s: float,
                   max_call_s: float) -> dict:
    """time_ms, runs, peak_mib and note of one point; out of memory (or a compiler error) is a note, not the end."""
    try:
        if compiled:
            fn()  # compiling is not the first call's time
        first, _ = median_time(fn, device, repeats=1, warmup=0)
        if first > max_call_s:
            return dict(time_ms=round(first * 1e3, 4), runs=1, peak_mib="",
                        note=f"one run: over {max_call_s:g} s per call, larger N skipped")
        t, times = median_time(fn, device, repeats=repeats, warmup=0, budget_s=budget_s)
        mem = peak_memory_bytes(fn, device)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        return dict(time_ms="", runs=0, peak_mib="", note=f"{failure_note(e, device, 120)}; larger N skipped")
    return dict(time_ms=round(t * 1e3, 4), runs=len(times), note="",
                peak_mib="" if mem is None else round(mem / 2 ** 20, 2))


def _call(module: Callable, inputs: tuple, backward: bool) -> Callable[[], None]:
    if not backward:
        def fwd() -> None:
            with torch.no_grad():
                module(*inputs)
        return fwd
    leaves = [t.detach().requires_grad_() for t in inputs]

    def fwd_bwd() -> None:
        module(*leaves).float().sum().backward()
        for t in leaves:
            t.grad = None
    return fwd_bwd


def crossover(rows: list[dict], kernel: str, *, reference: str = "softmax", head_dim: int | None = None,
              mode: str = "fwd") -> float | None:
    """The N at which ``kernel`` becomes faster than ``reference`` (log-log interpolation), or None."""
    def series(name: str) -> dict[int, float]:
        return {int(r["n"]): float(r["time_ms"]) for r in rows
                if r["kernel"] == name and r["mode"] == mode and r["time_ms"] not in ("", None)
                and (head_dim is None or int(r["head_dim"]) == head_dim)}
    a, b = series(kernel), series(reference)
    ns = sorted(set(a) & set(b))
    ratio = [(n, math.log(a[n] / b[n])) for n in ns]  # < 0 where the kernel is faster
    if not ratio:
        return None
    if ratio[0][1] < 0:
        return float(ratio[0][0])  # faster from the smallest N measured
    for (n0, r0), (n1, r1) in zip(ratio, ratio[1:]):
        if r0 >= 0 > r1:
            t = r0 / (r0 - r1)
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return None


def plot(rows: list[dict], path: Path, *, mode: str = "fwd", title: str = "") -> None:
    """Log-log time against N, one panel per head dim, softmax dashed, crossovers marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # compiled rows and failed points: in the CSV only
    rows = [r for r in rows if r.get("path", "") in ("", "eager") and r["time_ms"] not in ("", None)]
    dims = sorted({int(r["head_dim"]) for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(6.5 * len(dims), 5), squeeze=False)
    for ax, d in zip(axes[0], dims):
        sel = [r for r in rows if int(r["head_dim"]) == d and r["mode"] == mode]
        for i, name in enumerate(dict.fromkeys(r["kernel"] for r in sel)):
            pts = sorted((int(r["n"]), float(r["time_ms"])) for r in sel if r["kernel"] == name)
            # 16+ lines: 20 distinct colours, and a second line style for the second half
            style = dict(color=plt.cm.tab20(i % 20), ls="-" if i % 2 else "-.", lw=1.2)
            if name == "softmax":
                style = dict(color="black", ls="--", lw=2.5)
            elif name == "qt":
                style = dict(color="crimson", ls="-", lw=3)
            ax.loglog(*zip(*pts), marker="o", ms=3, label=name, **style)
            n_x = crossover(sel, name) if name != "softmax" else None
            if name == "qt" and n_x:
                ax.axvline(n_x, color="red", ls=":", lw=1)
                ax.annotate(f"qt = softmax at N≈{n_x:,.0f}", (n_x, ax.get_ylim()[0]), rotation=90, color="red",
                            va="bottom", ha="right", fontsize=8)
        ax.set(xlabel="tokens N", ylabel=f"{mode} time (ms)", title=f"head dim {d}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, path, title=title)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("kernels", help="time and memory of each attention kernel against N",
                              description="Time and peak memory of each attention kernel against the token count N; "
                                          "writes a CSV and a PNG (--out). Method and results: docs/benchmarks.md")
    p.add_argument("--kernels", nargs="+", default=list_kernels(), choices=list_kernels(), metavar="NAME",
                   help="kernels to time (default: all)")
    p.add_argument("--ns", nargs="+", type=positive_int, default=DEFAULT_NS, metavar="N", help="token counts")
    p.add_argument("--head-dims", nargs="+", type=positive_int, default=[16, 32], metavar="D", help="head dims")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="inputs' dtype (float16/bfloat16 on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda[:N] (default: cuda where there is one, else cpu)")
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd"],
                   help="forward only, and/or forward and backward")
    p.add_argument("--repeats", type=positive_int, default=5, help="runs per point; the median is reported")
    p.add_argument("--budget", type=positive_float, default=5.0,
                   help="seconds per point after which fewer runs are taken")
    p.add_argument("--max-call", type=positive_float, default=20.0,
                   help="a kernel slower than this per call skips larger N")
    p.add_argument("--peer", action="store_true", help="also time taylor-series-linear-attention (pip install it) "
                   "and measure the two speed ratios side by side (written to <out>_ratios.csv)")
    p.add_argument("--compile", action="store_true", help="also time each kernel under torch.compile (rows with "
                   "path 'compile'; needs a C++ compiler on CPU, ~10 s to compile each); with --peer also qt "
                   "against the minimal ReLU attention with both compiled")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's); 1 is steadier on a shared machine")
    p.add_argument("--out", type=Path, default=Path("results/kernels_cpu.csv"), help="the CSV written")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: the CSV's path with .png)")
    p.set_defaults(func=run_cli)


def _report_ratios(device: torch.device, line: str, out: Path, repeats: int, compiled: bool = False) -> None:
    ratios = speed_ratios(device, repeats=repeats, compiled=compiled)
    for r in ratios:
        print(f"{r['ratio']}: {r['kernel']} {r['kernel_ms']:.3f} ms, {r['baseline']} {r['baseline_ms']:.3f} ms at "
              f"N={r['n']} ({r['heads']} heads, d {r['head_dim']}): {r['value']:.2f} (target {r['target']})")
    path = out.with_name(out.stem + "_ratios.csv")
    write_csv(ratios, path, line, RATIO_FIELDS)
    print(f"wrote {path}")


def run_cli(args: argparse.Namespace) -> int:
    device = check_device(args.device, "kernels")
    png = args.plot or args.out.with_suffix(".png")
    check_outputs([args.out, png, png.with_name(png.stem + "_fwdbwd.png"),
                   args.out.with_name(args.out.stem + "_ratios.csv")], "kernels")
    if args.peer and importlib.util.find_spec(PEER) is None:
        raise SystemExit("qtvit benchmark kernels: --peer needs the peer library: "
                         "pip install taylor-series-linear-attention")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    line = device_line(device)
    print(f"# {line}\n# one row per point as it is measured; the table goes to {args.out} and a plot beside it")
    print(f"{'kernel':<16}{'N':>7}{'d':>4} {'mode':<8}{'path':<8}{'time ms':>11}{'peak MiB':>10}")

    def show(r: dict) -> None:
        ms = f"{r['time_ms']:.3f}" if r["time_ms"] != "" else "-"
        print(f"{r['kernel']:<16}{r['n']:>7}{r['head_dim']:>4} {r['mode']:<8}{r['path']:<8}{ms:>11}"
              f"{r['peak_mib'] if r['peak_mib'] != '' else '-':>10} {r['note']}", flush=True)

    rows = benchmark_kernels(args.kernels, args.ns, head_dims=args.head_dims, heads=args.heads, batch=args.batch,
                             dtype=getattr(torch, args.dtype), device=device, modes=args.modes,
                             repeats=args.repeats, budget_s=args.budget, max_call_s=args.max_call, peer=args.peer,
                             compiled=args.compile, on_row=show)
    write_csv(rows, args.out, line, FIELDS)
    print(f"wrote {args.out}")
    if args.peer:
        _report_ratios(device, line, args.out, max(args.repeats, 9), compiled=args.compile)
    for d in args.head_dims:
        sel = [r for r in rows if r["head_dim"] == d and r["path"] == "eager"]
        n_x = crossover(sel, "qt") if {"qt", "softmax"} <= set(args.kernels) else None
        if n_x:
            print(f"head dim {d}: qt is faster than softmax from N ≈ {n_x:,.0f}")
    try:
        for mode in args.modes:
            target = png if mode == args.modes[0] else png.with_name(png.stem + "_fwdbwd.png")
            plot(rows, target, mode=mode, title=line)
            print(f"wrote {target}")
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'qtvit[plot]')")
    return 0
