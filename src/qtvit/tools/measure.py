"""Timing and peak memory, the same way for every benchmark.

Time: the median of several runs after a warm-up (the machines are noisy). Memory: on CUDA, the allocator's peak
over the call; on CPU, the process's peak resident set over the call (Linux VmHWM, reset through
/proc/self/clear_refs), which also sees buffers that fused kernels allocate internally. Freed heap memory is
handed back to the OS first (malloc_trim) so that the call cannot hide its allocations in reused pages.
Shared by the benchmarks, the study (a run's peak memory) and the export (onnxruntime latency); where results are
written: ``tools.results``.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .._memory import peak_memory_of


def build_extensions(device: torch.device) -> None:
    """Build qt's fused CPU kernel before anything is timed: its one-time compile (20-45 s) is no call's time, and
    the max-call guard must not mistake it for a slow kernel."""
    if torch.device(device).type == "cpu":
        from ..attention import cpu_fused
        cpu_fused.build()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, *, repeats: int = 5, warmup: int = 1,
                budget_s: float | None = None) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs (at least 3 when a budget cuts it short)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if budget_s is not None and i >= 2 and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), times


def failure_note(error: BaseException, device: torch.device, width: int = 160) -> str:
    """A benchmark point that failed (out of memory, a compiler error) as a one-line CSV note; on CUDA the cached
    blocks are released first, so that the next point starts from a clean allocator."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return f"failed: {type(error).__name__}: {' '.join(str(error).split())[:width]}"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory at the peak of one call of ``fn`` over what was in use before it; None where unmeasurable
    (the project's one measurement: ``qtvit._memory.peak_memory_of``)."""
    return peak_memory_of(fn, device)
