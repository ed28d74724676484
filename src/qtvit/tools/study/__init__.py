"""Studies: `qtvit study kernels` (every attention kernel in one architecture on a task where global context
decides; see ``qtvit.tools.study.kernels``). Nothing in the library imports this package."""
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
    k.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 5, --small 2)")
    k.add_argument("--kernels", nargs="+", default=list(study.STUDY_KERNELS),
                   help="kernels to train (default: every kernel of the zoo)")
    k.add_argument("--rope-kernels", nargs="*", default=list(study.ROPE_KERNELS),
                   help="kernels also trained with their released RoPE, as <kernel>+rope (default: mala rala)")
    k.add_argument("--residual-kernels", nargs="*", default=["qt"],
                   help="kernels also trained with softmax as a training-time residual (none: leave empty)")
    k.add_argument("--long", nargs="*", default=list(study.LONG_VARIANTS), metavar="VARIANT",
                   help="variants also trained --long-factor times longer, as <variant>@<k>x (default: softmax relu "
                        "qt qt_paper control)")
    k.add_argument("--long-factor", type=int, default=study.LONG_FACTOR,
                   help=f"epochs multiplier of the --long variants (default {study.LONG_FACTOR}; 1: none)")
    k.add_argument("--no-control", dest="control", action="store_false", help="skip the attention-free control")
    k.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    k.add_argument("--canvas-size", type=int, default=None,
                   help="canvas side in pixels (default 64: 256 tokens; 128: 1024 tokens, a --device cuda size)")
    k.add_argument("--train-canvases", type=int, default=None, help="training canvases (default 6000, --small 64)")
    k.add_argument("--data", default=None, help="folder of Fashion-MNIST's idx files (default: the usual search)")
    k.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    k.add_argument("--workers", type=int, default=1, help="runs trained at once, in separate processes (default 1; "
                                                          "cpu only)")
    k.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's; with "
                                                             "--workers > 1: 1)")
    k.add_argument("--out", type=Path, default=Path("results/kernel_study"),
                   help="results folder; runs already recorded there (same plan) are not trained again")
    k.set_defaults(func=_kernels_cli)


def _kernels_cli(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .kernels import FULL, SMALL, run_study

    seeds = args.seeds if args.seeds is not None else (2 if args.small else 5)
    for name in ("epochs", "canvas_size", "train_canvases"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    plan = SMALL if args.small else FULL
    if args.canvas_size is not None:
        plan = replace(plan, spec=replace(plan.spec, size=args.canvas_size))
    if args.train_canvases is not None:
        plan = replace(plan, train=args.train_canvases)
    result = run_study(args.kernels, seeds, args.out, plan=plan, control=args.control,
                       residual_kernels=args.residual_kernels, rope_kernels=args.rope_kernels,
                       long_variants=args.long, long_factor=args.long_factor, data_root=args.data,
                       epochs=args.epochs, workers=args.workers, threads=args.threads, device=args.device)
    for path in result["paths"]:
        print(f"wrote {path}")
    return 0
