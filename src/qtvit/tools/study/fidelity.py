"""Fidelity to softmax (QT-ViT Fig. 2 made quantitative): with q and k captured from a trained softmax StudyNet on
test canvases, each kernel's explicit attention map against softmax's, per layer.

- **KL(softmax ‖ kernel)** per query row, in nats, averaged over rows, heads and images. A kernel's map is made a
  distribution first: negative weights (inline, mala, mean, cosine, taylor1 where q·k/√d < −1) clipped to 0, rows
  renormalised, then mixed with 10⁻³ of the uniform distribution so that exact zeros (relu) give a finite KL.
- **top-k overlap**: the share of softmax's k largest weights of a row that are among the kernel's k largest
  (ranked on the kernel's own map: its normalisers keep the order of Sim within a row), k = 8 of 256 keys.

Kernels are built fresh (``create_kernel``) at their initial parameters (qt's scale, qt_paper's α β γ,
polaformer's powers): what the map of each formula is on softmax's q and k, not what a model trained with that
kernel would learn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ...attention import AttentionKernel, create_kernel
from .net import StudyNet

__all__ = ["capture_qk", "map_fidelity", "fidelity_rows", "UNIFORM_MIX", "TOP_K"]

UNIFORM_MIX = 1e-3
TOP_K = 8


@torch.no_grad()
def capture_qk(net: StudyNet, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(q, k) of shape (B, H, N, d) at the input of every attention kernel of ``net``, for the float input x."""
    kernels = [m for m in net.modules() if isinstance(m, AttentionKernel)]
    if not kernels:
        raise ValueError(f"the {net.kernel} StudyNet has no attention kernel to read q and k from")
    got: list[tuple[Tensor, Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: got.append((args[0].detach(), args[1].detach())))
               for m in kernels]
    try:
        net.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return got


def _as_distribution(amap: Tensor) -> Tensor:
    p = amap.clamp_min(0)
    s = p.sum(dim=-1, keepdim=True)
    n = amap.shape[-1]
    p = torch.where(s > 0, p / s.clamp_min(1e-30), torch.full_like(p, 1.0 / n))
    return (1 - UNIFORM_MIX) * p + UNIFORM_MIX / n


@torch.no_grad()
def map_fidelity(q: Tensor, k: Tensor, kernel: str, top_k: int = TOP_K) -> dict[str, float]:
    """KL(softmax ‖ kernel) and top-k overlap of ``kernel``'s map on (q, k), averaged over rows, heads, batch."""
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    kern = create_kernel(kernel, head_dim=q.shape[-1], num_heads=q.shape[1])
    amap = kern.attention_map(q.double(), k.double())
    p = _as_distribution(amap)
    kl = (ref * (ref.clamp_min(1e-300).log() - p.log())).sum(dim=-1)
    k_ = min(top_k, q.shape[2])
    top_ref, top_ker = ref.topk(k_, dim=-1).indices, amap.topk(k_, dim=-1).indices
    overlap = (top_ref[..., :, None] == top_ker[..., None, :]).any(dim=-1).double().mean(dim=-1)
    return {"kl": float(kl.mean()), "topk_overlap": float(overlap.mean()),
            "negative_mass": float(amap.clamp_max(0).abs().sum(-1).mean())}


def fidelity_rows(net: StudyNet, x: Tensor, kernels: Sequence[str]) -> list[dict]:
    """One row per kernel and layer, and one per kernel averaged over layers (layer = "mean")."""
    qk = capture_qk(net, x)
    rows = []
    for name in kernels:
        per_layer = [dict(kernel=name, layer=i, **map_fidelity(q, k, name)) for i, (q, k) in enumerate(qk)]
        mean = {m: sum(r[m] for r in per_layer) / len(per_layer) for m in ("kl", "topk_overlap", "negative_mass")}
        rows += per_layer + [dict(kernel=name, layer="mean", **mean)]
    for r in rows:
        r.update(images=len(x), tokens=qk[0][0].shape[2], top_k=min(TOP_K, qk[0][0].shape[2]))
    return rows


def plot_fidelity(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two bar panels, KL and top-k overlap per kernel (layers averaged)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    mean = [r for r in rows if r["layer"] == "mean"]
    names = [r["kernel"] for r in mean]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.28 * len(names) + 1.5), sharey=True)
    axes[0].barh(names, [r["kl"] for r in mean], color="tab:red")
    axes[0].set(xlabel="KL(softmax ‖ kernel), nats", xscale="log")
    axes[1].barh(names, [r["topk_overlap"] for r in mean], color="tab:blue")
    axes[1].set(xlabel=f"top-{mean[0]['top_k']} overlap with softmax", xlim=(0, 1))
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, title=title)
