"""Attention maps of one query token under several kernels (QT-ViT Fig. 2): ``qtvit figure attention``.

    qtvit figure attention                                  # matplotlib's sample photo, 14x14 patch tokens
    qtvit figure attention --image cat.jpg --query 5 8 --kernels softmax relu taylor1 taylor2 qt
    qtvit figure attention --model qtvit_1 --checkpoint qtvit1.pth --layer -1 --head 0

Attention maps go through the explicit O(N²) path (``AttentionKernel.attention_map``): every row is the normalised
weight that one query gives to every key, so the figure shows exactly what the linear path computes implicitly.

Where q and k come from:
- default, ``patches``: the image is cut into ``--patch`` px patches; each patch's pixels, centred, are projected
  on their first ``--dim`` principal components and whitened, and q = k = those features. No weights needed, so
  the figure compares the kernels' shapes on real image statistics (colour and texture similarity);
- ``--model``: q and k captured at the input of the chosen attention layer of a network (with QT-ViT's positional
  embedding already added to k), one head. Meaningful with trained weights (``--checkpoint`` / ``--pretrained``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..results import save_figure

__all__ = ["PAPER_KERNELS", "default_image", "load_image", "patch_tokens", "model_tokens", "attention_rows",
           "plot_attention_maps"]

PAPER_KERNELS = ("softmax", "relu", "taylor1", "taylor2", "qt")


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
            # the whole map, then the row: some kernels need every query (castling adds 0.5·v_i to token i)
            amap = kern.attention_map(q, k)  # (1, H, N, N)
        rows[name] = amap[0, :, query].mean(dim=0)
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
