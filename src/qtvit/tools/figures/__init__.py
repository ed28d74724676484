"""Figures as PNG files: attention maps of several kernels (``figures.attention``), top-1 against latency
(``figures.pareto``), segmentation predictions (``figures.segmentation``), detections (``figures.detection``), and
the ``qtvit figure`` command.
Saved through the shared results writer (``tools.results``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..results import provenance
from .attention import (PAPER_KERNELS, attention_rows, default_image, load_image, model_tokens, patch_tokens,
                        plot_attention_maps)
from .pareto import (PAPER_TOP1, pareto_front, pareto_rows_from_benchmark, plot_pareto, read_pareto_csv,
                     write_pareto_csv)

__all__ = [
    "PAPER_KERNELS", "PAPER_TOP1", "default_image", "load_image", "patch_tokens", "model_tokens", "attention_rows",
    "plot_attention_maps", "read_pareto_csv", "pareto_front", "plot_pareto", "pareto_rows_from_benchmark",
    "write_pareto_csv", "add_figure_parser",
]


def add_figure_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``qtvit figure {attention,pareto,segmentation,detection}``."""
    p = subparsers.add_parser("figure", help="attention-map, Pareto, segmentation and detection figures (PNG)",
                              description="Figures as PNG files (--out): attention maps of several kernels, "
                                          "top-1 against latency, segmentation predictions, detections beside "
                                          "the ground truth. Examples: docs/benchmarks.md")
    sub = p.add_subparsers(dest="figure", required=True, metavar="{attention,pareto,segmentation,detection}")

    a = sub.add_parser("attention", help="one query token's attention under several kernels (QT-ViT Fig. 2)")
    a.add_argument("--image", type=Path, default=None, help="image file (default: matplotlib's sample photo)")
    a.add_argument("--img-size", type=int, default=224, help="the image is resized to this side")
    a.add_argument("--kernels", nargs="+", default=list(PAPER_KERNELS), metavar="NAME", help="kernels, one panel each")
    a.add_argument("--query", type=int, nargs=2, default=None, metavar=("ROW", "COL"),
                   help="query token on the token grid (default: the grid's centre)")
    a.add_argument("--patch", type=int, default=16, help="patch size of the default patch tokens")
    a.add_argument("--dim", type=int, default=16, help="head dim of the default patch tokens")
    a.add_argument("--model", default=None, help="take q, k from this model's attention layer instead")
    a.add_argument("--checkpoint", type=Path, default=None, help="weights for --model (default: none, random weights)")
    a.add_argument("--pretrained", action="store_true", help="the official weights for --model")
    a.add_argument("--layer", type=int, default=-1, help="attention layer index (with --model)")
    a.add_argument("--head", type=int, default=0, help="head (with --model)")
    a.add_argument("--out", type=Path, default=Path("results/attention_maps.png"), help="the PNG written")
    a.set_defaults(func=_attention_cli)

    r = sub.add_parser("pareto", help="top-1 against latency, Pareto fronts per family (QT-ViT Fig. 1)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, help="a CSV with columns model, top1, latency_ms [, family]")
    src.add_argument("--benchmark", type=Path, help="a `qtvit benchmark models` CSV; top-1 from the papers")
    r.add_argument("--mode", default="eager", help="with --benchmark: which mode's latency")
    r.add_argument("--size", default="224", help="with --benchmark: which input size")
    r.add_argument("--batch", type=int, default=1, help="with --benchmark: which batch size")
    r.add_argument("--out", type=Path, default=Path("results/pareto.png"), help="the PNG written")
    r.set_defaults(func=_pareto_cli)

    from .segmentation import add_segmentation_figure_parser  # its imports (training, data) only when figures are asked
    add_segmentation_figure_parser(sub)
    from .detection import add_detection_figure_parser
    add_detection_figure_parser(sub)


def _attention_cli(args: argparse.Namespace) -> int:
    from ... import create_model, list_kernels

    bad = [k for k in args.kernels if k not in list_kernels()]
    if bad:
        raise ValueError(f"unknown kernel(s) {', '.join(bad)}; known: {', '.join(list_kernels())}")
    image = load_image(args.image, args.img_size)
    if args.model or args.checkpoint or args.pretrained:  # a checkpoint names its model
        if args.pretrained and not args.model:
            raise ValueError("--pretrained needs --model <name> (qtvit list-models --pretrained)")
        model = create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
        q, k, grid = model_tokens(model, image, layer=args.layer, head=args.head)
        arch = model.pretrained_cfg.get("architecture", args.model)
        source = f"{arch} attention layer {args.layer}, head {args.head}"
    else:
        q, grid = patch_tokens(image, args.patch, args.dim)
        k = q
        source = f"q = k = whitened PCA ({q.shape[-1]} dims) of {args.patch} px patches"
    row, col = args.query if args.query else (grid[0] // 2, grid[1] // 2)
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        raise ValueError(f"--query {row} {col} is outside the {grid[0]}x{grid[1]} token grid")
    query = row * grid[1] + col
    rows = attention_rows(q, k, query, args.kernels)
    name = args.image.name if args.image else "grace_hopper.jpg"
    path = plot_attention_maps(image, rows, grid, query, args.out,
                               title=f"{name}: query token ({row}, {col}) of {grid[0]}x{grid[1]}; {source}")
    print(f"wrote {path}")
    return 0


def _pareto_cli(args: argparse.Namespace) -> int:
    if args.csv:
        rows, title = read_pareto_csv(args.csv), str(args.csv)
    else:
        rows = pareto_rows_from_benchmark(args.benchmark, mode=args.mode, size=args.size, batch=args.batch)
        machine = provenance(args.benchmark)
        # two lines: the machine string alone is as wide as the figure
        title = f"top-1: papers (ImageNet, 224 px); latency: {args.mode}, batch {args.batch}, {args.size} px\n{machine}"
        csv_out = args.out.with_suffix(".csv")
        write_pareto_csv(rows, csv_out, title.replace("\n", "; "))
        print(f"wrote {csv_out}")
    path = plot_pareto(rows, args.out, title=title)
    print(f"wrote {path}")
    return 0
