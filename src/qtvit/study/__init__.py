"""Studies: `qtvit study kernels` (every attention kernel in one architecture on a task where global context
decides; see ``qtvit.study.kernels``). Nothing in the library imports this package."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_study_parser"]


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``qtvit study kernels``."""
    from . import kernels as study

    p = subparsers.add_parser("study", help="studies that train many small models (CSV + PNG)")
    sub = p.add_subparsers(dest="study", required=True, metavar="{kernels}")
    k = sub.add_parser("kernels", help="every kernel in one architecture, several seeds, against an attention-free "
                                       "control; fidelity of each kernel's map to softmax's",
                       description="Train one small network per attention kernel (several seeds) on a synthetic "
                                   "task and write CSVs and PNGs into --out. The study and its results: "
                                   "docs/kernel_study.md")
    k.add_argument("--small", action="store_true", help="tiny data and recipe: a smoke run of the whole pipeline")
    k.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 3, --small 2)")
    k.add_argument("--kernels", nargs="+", default=list(study.STUDY_KERNELS), help="kernels to train")
    k.add_argument("--residual-kernels", nargs="*", default=["qt"],
                   help="kernels also trained with softmax as a training-time residual (none: leave empty)")
    k.add_argument("--no-control", dest="control", action="store_false", help="skip the attention-free control")
    k.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    k.add_argument("--data", default=None, help="folder of Fashion-MNIST's idx files (default: the usual search)")
    k.add_argument("--workers", type=int, default=1, help="runs trained at once, in separate processes (default 1)")
    k.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's; with "
                                                             "--workers > 1: 1)")
    k.add_argument("--out", type=Path, default=Path("results/kernel_study"), help="folder of the CSVs and PNGs written")
    k.set_defaults(func=_kernels_cli)


def _kernels_cli(args: argparse.Namespace) -> int:
    from .kernels import run_study

    seeds = args.seeds if args.seeds is not None else (2 if args.small else 3)
    if seeds < 1 or (args.epochs is not None and args.epochs < 1):
        raise ValueError(f"--seeds ({seeds}) and --epochs ({args.epochs}) must be at least 1")
    result = run_study(args.kernels, seeds, args.out, small=args.small, control=args.control,
                       residual_kernels=args.residual_kernels, data_root=args.data, epochs=args.epochs,
                       workers=args.workers, threads=args.threads)
    for path in result["paths"]:
        print(f"wrote {path}")
    return 0
