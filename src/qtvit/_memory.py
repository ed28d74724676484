"""Peak memory, measured one way for the whole project: the CUDA allocator's peak on a GPU, the resident-set
high-water mark (``VmHWM``) on a CPU. Training reports the process's peak so far (``peak_memory_mb``); the
benchmarks and the study the extra memory at the peak of one call (``peak_memory_of``), which resets the mark first.
"""
from __future__ import annotations

import ctypes
import resource
from typing import Callable

import torch

__all__ = ["peak_memory_mb", "peak_memory_of"]


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim), so the next peak is measured from a clean base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then be under-counted by reused heap
        pass


def _high_water_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    kb = _proc_status_kb("VmHWM")
    return None if kb is None else kb * 1024


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, MiB (where /proc is missing, the kernel's own resident-set peak)."""
    peak = _high_water_bytes(device)
    if peak is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return peak / 2**20


def peak_memory_of(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory at the peak of one call of ``fn`` over what was in use before it, bytes; None where
    unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return _high_water_bytes(device) - before
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _proc_status_kb("VmRSS")
    fn()
    after = _high_water_bytes(device)
    if before is None or after is None:
        return None
    return max(0, after - before * 1024)
