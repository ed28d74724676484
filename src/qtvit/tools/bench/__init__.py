"""Benchmarks: `qtvit benchmark kernels` (attention kernels against N) and `qtvit benchmark models`."""
from __future__ import annotations

import argparse


def add_benchmark_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `qtvit benchmark {kernels,models}`."""
    from . import kernels

    p = subparsers.add_parser("benchmark", help="speed and memory benchmarks (CSV + PNG)")
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="{kernels,models}")
    kernels.add_parser(sub)
    try:
        from . import models
    except ImportError:  # the model benchmark needs the model zoo
        return
    models.add_parser(sub)
