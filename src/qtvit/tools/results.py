"""The results writer every application shares: CSV files whose first line says where the numbers come from (a
``# `` provenance line, usually with ``device_line``), figures saved the same way, and both read back.

Used by the benchmarks (``tools.bench``), the kernel study (``tools.study``) and the figures (``tools.figures``).
Files are written beside their target and renamed into place (``qtvit._io.atomic_write``): no partial file.
"""
from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from .._io import atomic_write

__all__ = ["device_line", "write_csv", "read_csv", "provenance", "save_figure"]


def device_line(device: torch.device, *, threads: bool = True) -> str:
    """A one-line description of the machine, saved beside every result (``threads``: with torch's thread count)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}" if threads else \
        f"{cpu}, torch {torch.__version__}"


def write_csv(rows: list[dict], path: str | Path, header: str, fields: Sequence[str], *,
              extrasaction: str = "raise") -> Path:
    """Results as CSV with a ``# header`` first line (read back by ``read_csv``), written atomically.
    ``extrasaction="ignore"`` drops row keys that are not ``fields``."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(f"# {header}\n")
            w = csv.DictWriter(f, fieldnames=list(fields), extrasaction=extrasaction)
            w.writeheader()
            w.writerows(rows)

    return atomic_write(path, write)


def provenance(path: str | Path) -> str:
    """The ``# `` first line of a results CSV (without the marker), or "" where the file has none."""
    with open(path) as f:
        first = f.readline()
    return first[2:].strip() if first.startswith("# ") else ""


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a results CSV (or a user's table in the same form), skipping ``#`` comment lines and blank lines."""
    with open(path) as f:
        return list(csv.DictReader([line for line in f if line.strip() and not line.startswith("#")]))


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120, title: str = "") -> Path:
    """Title, tight layout, save atomically (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"  # the temporary name's suffix would not tell matplotlib
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)
