"""Side by side at high resolution: QT-ViT-1's inference paths against EfficientViT-B1, the official QT-ViT code
and the compute floor, in one interleaved run per size (``qtvit benchmark models --side-by-side``).

Per size, every callable runs in turn (A B C ... A B C ...), batch 1, fp32, so load drifts hit all alike:
``qtvit_1`` in each of ``modes``, ``efficientvit_b1`` in each fp32 onnxruntime mode of them (run just before
qtvit_1 in the same mode), and, with ``official``, QT-ViT-1 from a checkout of AMD-AIG-AIMA/AMD_QTViT in eager
PyTorch; a pause of ``PAUSE_S`` before each call lets the previous one's spinning threads go idle (on 2 cores they
would slow the next call down). Reported, from the medians:

- ``qt_over_b1``: qtvit_1 / efficientvit_b1, both in the first onnxruntime mode of ``modes`` (goal <= 1.10; the
  other onnxruntime modes get their own ``qt_over_b1 <mode>`` column);
- ``fastest``: the fp32 qtvit_1 mode with the smallest median (measured, not assumed; int8 is only reported);
- ``official_over_fastest``: official QT-ViT-1 / that fastest path (goal >= 3.0);
- ``fastest_over_floor``: the fastest path / (2 x MACs / the sgemm rate), the rate measured in the same turns
  (a 2048 x 2048 fp32 product is one of the callables), so it sees the same load (goal <= 3.0 at 1024).
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..._utils import parse_size
from .paths import Forms, build_model, count_flops, interleaved_times, load_official_qtvit, runner

__all__ = ["side_by_side", "DEFAULT_SIDE_MODES"]

DEFAULT_SIDE_MODES = ("fused-dynamic", "onnxruntime")
SGEMM_N = 2048
PAUSE_S = 0.2


def _ort_mode(modes: Sequence[str]) -> str:
    mode = next((m for m in modes if m.startswith("onnxruntime") and not m.endswith("int8")), None)
    if mode is None:
        raise ValueError("the side-by-side run compares qtvit_1 with efficientvit_b1 in onnxruntime: include "
                         "onnxruntime or onnxruntime-nospin in --modes")
    return mode


def side_by_side(sizes: Sequence[str | int], *, modes: Sequence[str] = DEFAULT_SIDE_MODES, repeats: int = 7,
                 official: str | Path | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per size (see the module docstring); ``official``: a checkout of AMD-AIG-AIMA/AMD_QTViT."""
    ort_mode = _ort_mode(modes)
    a, b = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
    torch.manual_seed(0)
    qt, b1 = build_model("qtvit_1"), build_model("efficientvit_b1")
    ref = load_official_qtvit(official) if official else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        forms_qt, forms_b1 = Forms(qt, Path(tmp) / "qt"), Forms(b1, Path(tmp) / "b1")
        (Path(tmp) / "qt").mkdir()
        (Path(tmp) / "b1").mkdir()
        for size in sizes:
            h, w = parse_size(size)
            if ref is not None and h != w:
                raise ValueError(f"the official QT-ViT code takes square inputs only, got {h}x{w}")
            load = os.getloadavg()[0]
            fns = {"sgemm": lambda: torch.mm(a, b)}
            for m in modes:
                if m.startswith("onnxruntime") and not m.endswith("int8"):
                    fns[f"efficientvit_b1 {m}"] = forms_b1.build(m, h, w, 1)[0]
                fns[f"qtvit_1 {m}"] = forms_qt.build(m, h, w, 1)[0]
            if ref is not None:
                fns["official QT-ViT-1 eager"] = runner(ref, torch.randn(1, 3, h, w))
            times = interleaved_times(fns, repeats=repeats, warmup=1, pause_s=PAUSE_S)
            med = {k: statistics.median(v) for k, v in times.items()}
            rate = 2 * SGEMM_N ** 3 / med.pop("sgemm") / 1e9
            row = _row(h, w, med, modes, ort_mode, rate, count_flops(qt, (1, 3, h, w)) / 2, load, repeats)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def _row(h: int, w: int, med: dict[str, float], modes: Sequence[str], ort_mode: str, rate: float, macs: float,
         load: float, repeats: int) -> dict:
    fastest = min((m for m in modes if not m.endswith("int8")), key=lambda m: med[f"qtvit_1 {m}"])  # fp32 goals
    t_fast = med[f"qtvit_1 {fastest}"]
    floor = 2 * macs / (rate * 1e9)
    row = dict(size=f"{h}" if h == w else f"{h}x{w}", runs=repeats, load1=round(load, 2),
               sgemm_gflops=round(rate, 1), gmacs=round(macs / 1e9, 3),
               floor_ms=float(f"{floor * 1e3:.4g}"))  # 4 significant digits: small models have sub-ms floors
    row.update({f"{k} ms": float(f"{v * 1e3:.4g}") for k, v in med.items()})  # 4 digits, not 2 decimals: the
    # ratios below use unrounded times, and a tiny model's 0.05 ms rounded to 0.01 ms would not match them
    row["qt_over_b1"] = round(med[f"qtvit_1 {ort_mode}"] / med[f"efficientvit_b1 {ort_mode}"], 3)
    for m in modes:
        if m != ort_mode and f"efficientvit_b1 {m}" in med:
            row[f"qt_over_b1 {m}"] = round(med[f"qtvit_1 {m}"] / med[f"efficientvit_b1 {m}"], 3)
    row["fastest"] = fastest
    if "official QT-ViT-1 eager" in med:
        row["official_over_fastest"] = round(med["official QT-ViT-1 eager"] / t_fast, 3)
    row["fastest_over_floor"] = round(t_fast / floor, 3)
    return row


def format_row(r: dict) -> str:
    """One printed line per size: the times, then the three ratios with their goals."""
    times = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in r.items() if k.endswith(" ms"))
    goals = [f"qtvit_1/b1 (onnxruntime) {r['qt_over_b1']:.3f} ({'met' if r['qt_over_b1'] <= 1.10 else 'MISSED'} "
             "<= 1.10)"] + [f"{k.replace('qt_over_b1 ', 'qtvit_1/b1 (') + ')'} {v:.3f}" for k, v in r.items()
                            if k.startswith("qt_over_b1 ")]
    if "official_over_fastest" in r:
        v = r["official_over_fastest"]
        goals.append(f"official/fastest {v:.3f} ({'met' if v >= 3.0 else 'MISSED'} >= 3.0)")
    v = r["fastest_over_floor"]
    goals.append(f"fastest/floor {v:.2f} (floor {r['floor_ms']:.1f} ms = 2 x {r['gmacs']} GMACs / "
                 f"{r['sgemm_gflops']:.0f} GFLOP/s; goal <= 3.0 at 1024)")
    return (f"{r['size']:>5} (load {r['load1']}): {times} ms; fastest qtvit_1: {r['fastest']}\n      "
            + "; ".join(goals))
