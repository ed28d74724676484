"""Figures: attention maps of one query token under several kernels (QT-ViT Fig. 2) and an accuracy-latency
Pareto plot (QT-ViT Fig. 1).

    qtvit figure attention                                  # matplotlib's sample photo, 14x14 patch tokens
    qtvit figure attention --image cat.jpg --query 5 8 --kernels softmax relu taylor1 taylor2 qt
    qtvit figure attention --model qtvit_1 --checkpoint qtvit1.pth --layer -1 --head 0
    qtvit figure pareto --csv results/my_accuracy.csv       # columns model, top1, latency_ms [, family]
    qtvit figure pareto --benchmark results/models_cpu.csv  # papers' top-1 + this machine's batch-1 latency

Attention maps go through the explicit O(N²) path (``AttentionKernel.attention_map``): every row is the normalised
weight that one query gives to every key, so the figure shows exactly what the linear path computes implicitly.

Where q and k come from:
- default, ``patches``: the image is cut into ``--patch`` px patches; each patch's pixels, centred, are projected
  on their first ``--dim`` principal components and whitened, and q = k = those features. No weights needed, so
  the figure compares the kernels' shapes on real image statistics (colour and texture similarity);
- ``--model``: q and k captured at the input of the chosen attention layer of a network (with QT-ViT's positional
  embedding already added to k), one head. Meaningful with trained weights (``--checkpoint`` / ``--pretrained``).

Pareto CSV format: a header line with at least ``model``, ``top1`` (percent) and ``latency_ms``; optional
``family`` (default: the model name up to its first ``_``, e.g. ``qtvit``, ``efficientvit``), ``params_m``,
``gmacs``. Lines starting with ``#`` are comments.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._utils import parse_size
from ..measure import read_csv, save_figure, write_csv

__all__ = [
    "PAPER_KERNELS", "PAPER_TOP1", "default_image", "load_image", "patch_tokens", "model_tokens", "attention_rows",
    "plot_attention_maps", "read_pareto_csv", "pareto_front", "plot_pareto", "pareto_rows_from_benchmark",
    "write_pareto_csv", "add_figure_parser",
]
PARETO_FIELDS = ["model", "family", "top1", "latency_ms", "params_m", "gmacs"]

PAPER_KERNELS = ("softmax", "relu", "taylor1", "taylor2", "qt")

# ImageNet-1k top-1 at 224 as published (QT-ViT Table 1; EfficientViT model zoo; L2ViT README), for the Pareto
# plot of `--benchmark`: the accuracy is the papers', the latency this machine's.
PAPER_TOP1 = {
    "efficientvit_b1": 79.4, "efficientvit_b2": 82.1, "efficientvit_b3": 83.5,
    "efficientvit_l1": 84.5, "efficientvit_l2": 85.1, "efficientvit_l3": 85.8,
    "qtvit_1": 79.6, "qtvit_2": 82.5, "qtvit_3": 83.9, "qtvit_4": 84.7, "qtvit_5": 85.2, "qtvit_6": 86.0,
    "l2vit_tiny": 83.1, "l2vit_small": 84.1, "l2vit_base": 84.4,
}


# --------------------------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------------------------
def default_image() -> Path:
    """matplotlib's sample photograph (grace_hopper.jpg, public domain), shipped with matplotlib."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the default image comes with matplotlib: pip install 'qtvit[plot]' or pass an image") from e
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's sample image is missing ({path}); pass an image path instead")
    return path


def load_image(path: str | Path | None = None, size: int | Sequence[int] = 224) -> Tensor:
    """An RGB image as a (3, H, W) float tensor in [0, 1], resized (bicubic) to ``size`` (side or (H, W))."""
    from PIL import Image

    path = Path(path) if path is not None else default_image()
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    img = Image.open(path).convert("RGB").resize((w, h), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(h, w, 3)
    return x.permute(2, 0, 1).float() / 255.0


def patch_tokens(image: Tensor, patch: int = 16, dim: int = 16) -> tuple[Tensor, tuple[int, int]]:
    """Whitened principal components of the image's patches: (1, 1, N, dim) tokens and the (h, w) token grid."""
    c, h, w = image.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}; resize it first")
    x = image.unfold(1, patch, patch).unfold(2, patch, patch)  # (C, h', w', p, p)
    gh, gw = x.shape[1], x.shape[2]
    x = x.permute(1, 2, 0, 3, 4).reshape(gh * gw, c * patch * patch).double()
    x = x - x.mean(dim=0, keepdim=True)
    dim = min(dim, x.shape[0] - 1, x.shape[1])
    if dim < 1:
        raise ValueError("need at least 2 patches for principal components")
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    tokens = u[:, :dim] * math.sqrt(x.shape[0] - 1)  # unit variance per component
    return tokens.float().reshape(1, 1, gh * gw, dim), (gh, gw)


def model_tokens(model: torch.nn.Module, image: Tensor, layer: int = -1,
                 head: int | None = 0) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """q and k at the input of attention layer ``layer`` (index among the model's attention kernels).

    Returns q, k of shape (1, heads, N, d) (``head`` selects one, None keeps all) and the token grid (h, w),
    inferred from the layer's input map when it is square-compatible with the image's aspect ratio. The RGB image
    in [0, 1] is fed as the model expects it: grey for a one-channel model, normalised with its mean and std.
    """
    from ...attention import AttentionKernel
    from ...data.transforms import normalize, resolve_data_config

    cfg = resolve_data_config(model)
    grey = cfg.input_size[0] == 1 and image.shape[0] == 3
    x = normalize((image.mean(0, keepdim=True) if grey else image)[None], cfg.mean, cfg.std)

    kernels = [m for m in model.modules() if isinstance(m, AttentionKernel)]
    if not kernels:
        raise ValueError(f"{type(model).__name__} has no attention kernel to read q and k from")
    try:
        target = kernels[layer]
    except IndexError:
        raise ValueError(f"layer {layer} out of range: the model has {len(kernels)} attention layers") from None
    got: dict[str, Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        got.setdefault("q", args[0].detach())
        got.setdefault("k", args[1].detach())

    handle = target.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    q, k = got["q"][:1], got["k"][:1]
    if head is not None:
        if not 0 <= head < q.shape[1]:
            raise ValueError(f"head {head} out of range: the layer has {q.shape[1]} heads")
        q, k = q[:, head:head + 1], k[:, head:head + 1]
    n = q.shape[2]
    _, h, w = image.shape
    gh = max(1, round(math.sqrt(n * h / w)))
    if n % gh:
        raise ValueError(f"cannot lay {n} tokens on a grid with the image's aspect ratio {h}x{w}")
    return q, k, (gh, n // gh)


def attention_rows(q: Tensor, k: Tensor, query: int, kernels: Iterable[str] = PAPER_KERNELS,
                   **options) -> dict[str, Tensor]:
    """For each kernel, the explicit normalised attention map's row of token ``query``, averaged over heads: (N,).

    Each row sums to 1 (up to the kernel's eps): the weights that query gives to every key.
    """
    from ... import create_kernel

    if not 0 <= query < q.shape[2]:
        raise ValueError(f"query token {query} out of range 0..{q.shape[2] - 1}")
    rows = {}
    for name in kernels:
        kern = create_kernel(name, head_dim=q.shape[-1], num_heads=q.shape[1], **options.get(name, {}))
        with torch.no_grad():
            amap = kern.attention_map(q[:, :, query:query + 1], k)  # (1, H, 1, N): only the row needed
        rows[name] = amap[0, :, 0].mean(dim=0)
    return rows


def plot_attention_maps(image: Tensor, rows: dict[str, Tensor], grid: tuple[int, int], query: int,
                        path: str | Path, title: str = "") -> Path:
    """One panel per kernel: the query's attention over the image (each panel on its own colour scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gh, gw = grid
    _, h, w = image.shape
    n = len(rows) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6 * h / w + 0.5))
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    qy, qx = divmod(query, gw)
    cy, cx = (qy + 0.5) * h / gh, (qx + 0.5) * w / gw
    axes[0].imshow(img)
    axes[0].set_title("image, query ×", fontsize=9)
    for ax, (name, row) in zip(axes[1:], rows.items()):
        amap = row.reshape(1, 1, gh, gw).float()
        up = F.interpolate(amap, size=(h, w), mode="nearest")[0, 0].numpy()
        ax.imshow(img, alpha=0.35)
        ax.imshow(up, cmap="inferno", alpha=0.75)
        peak = float(row.max()) * row.numel()
        ax.set_title(f"{name}  (max {peak:.1f}× uniform)", fontsize=9)
    for ax in axes:
        ax.plot([cx], [cy], marker="x", color="cyan", ms=9, mew=2)
        ax.set_axis_off()
    return save_figure(fig, path, title=title)


# --------------------------------------------------------------------------------------------------------------------
# Pareto
# --------------------------------------------------------------------------------------------------------------------
def read_pareto_csv(path: str | Path) -> list[dict]:
    """Rows of a Pareto CSV (see the module docstring): ``top1`` and ``latency_ms`` as floats, ``family`` filled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV at {path}")
    with open(path) as f:
        reader = csv.DictReader([line for line in f if line.strip() and not line.startswith("#")])
        missing = {"model", "top1", "latency_ms"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; a Pareto CSV needs "
                             f"model, top1, latency_ms (and optionally family, params_m, gmacs)")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                r["top1"], r["latency_ms"] = float(r["top1"]), float(r["latency_ms"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, row {i}: top1 and latency_ms must be numbers, got {r}") from None
            r["family"] = r.get("family") or r["model"].split("_")[0]
            rows.append(r)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def pareto_front(rows: Sequence[dict]) -> list[dict]:
    """The rows no other row beats on both latency (lower) and top-1 (higher), by increasing latency."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r["latency_ms"], -r["top1"])):
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Top-1 against latency, one colour per family, each family's Pareto front joined, the overall front dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = list(dict.fromkeys(r["family"] for r in rows))
    for i, fam in enumerate(families):
        sel = [r for r in rows if r["family"] == fam]
        front = pareto_front(sel)
        color = plt.cm.tab10(i % 10)
        ax.plot([r["latency_ms"] for r in front], [r["top1"] for r in front], "-", color=color, lw=2 if fam == "qtvit"
                else 1.2, label=fam)
        ax.scatter([r["latency_ms"] for r in sel], [r["top1"] for r in sel], color=color, s=22, zorder=3)
        for r in sel:
            ax.annotate(r["model"], (r["latency_ms"], r["top1"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    overall = pareto_front(rows)
    ax.plot([r["latency_ms"] for r in overall], [r["top1"] for r in overall], ":", color="grey", lw=1,
            label="overall front")
    ax.set_xscale("log")
    ax.set(xlabel="latency (ms)", ylabel="ImageNet top-1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)  # an axes title, smaller than save_figure's suptitle
    return save_figure(fig, path)


def pareto_rows_from_benchmark(bench_csv: str | Path, *, mode: str = "eager", size: str = "224",
                               batch: int = 1, top1: dict[str, float] | None = None) -> list[dict]:
    """Pareto rows from a ``qtvit benchmark models`` CSV: its latency at (mode, size, batch), the papers' top-1."""

    h, w = parse_size(size)
    top1 = PAPER_TOP1 if top1 is None else top1
    rows = []
    for r in read_csv(Path(bench_csv)):
        if (r["mode"], int(r["height"]), int(r["width"]), int(r["batch"])) != (mode, h, w, batch):
            continue
        if r["model"] in top1 and r["time_ms"] not in ("", None):
            rows.append(dict(model=r["model"], top1=top1[r["model"]], latency_ms=float(r["time_ms"]),
                             family=r["model"].split("_")[0], params_m=r.get("params_m", ""),
                             gmacs=r.get("gmacs", "")))
    if not rows:
        raise ValueError(f"{bench_csv} has no measured {mode} batch-{batch} {size} px point of a model with a known "
                         f"top-1 ({', '.join(top1)})")
    return rows


def write_pareto_csv(rows: Sequence[dict], path: str | Path, comment: str) -> Path:
    """The Pareto plot's points as CSV (``# comment`` first), through the benchmarks' atomic CSV writer."""
    return write_csv(list(rows), path, comment, PARETO_FIELDS, extrasaction="ignore")


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def add_figure_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``qtvit figure {attention,pareto,segmentation}``."""
    p = subparsers.add_parser("figure", help="attention-map, Pareto and segmentation figures (PNG)",
                              description="Figures as PNG files (--out): attention maps of several kernels, "
                                          "top-1 against latency, segmentation predictions. Examples: "
                                          "docs/benchmarks.md")
    sub = p.add_subparsers(dest="figure", required=True, metavar="{attention,pareto,segmentation}")

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
        with open(args.benchmark) as f:
            machine = f.readline().lstrip("# ").strip()
        # two lines: the machine string alone is as wide as the figure
        title = f"top-1: papers (ImageNet, 224 px); latency: {args.mode}, batch {args.batch}, {args.size} px\n{machine}"
        csv_out = args.out.with_suffix(".csv")
        write_pareto_csv(rows, csv_out, title.replace("\n", "; "))
        print(f"wrote {csv_out}")
    path = plot_pareto(rows, args.out, title=title)
    print(f"wrote {path}")
    return 0
