"""The kernel study's one architecture: a small conv-stem ViT whose token mixer is any kernel of the zoo.

    stem: conv 3x3 s2 + BN + GELU, conv 3x3 s2 + BN   (stride 4: 16 x 16 tokens at 64 px) + learned positions
    ``depth`` x [x + DWConv3x3(x);  x + Mixer(LN(x));  x + MLP(LN(x))]
    head: LN, mean over tokens, linear

The mixer is multi-head attention (q, k, v and output projections around ``kernel_layer(head_dim, heads)``), or
for the attention-free control a channel MLP C -> 2C -> C (4C² weights, the budget of the q, k, v and output
projections) that mixes no tokens. The depthwise convolution before the mixer gives every variant the same local
view, so that what differs is global mixing only. Nothing else of a kernel's original layer (QT-ViT's v shortcut
and positional embedding on k, PolaFormer's gate, InLine's local residual, MALA's and RALA's LePE) is used: one
layer for every kernel. MALA's and RALA's RoPE is a kernel option (``kernel_options``: ``rope=True``).

``SoftmaxResidual`` wraps a linear kernel with softmax attention added during training, O = lin(q, k, v) +
λ·softmax(q, k, v), λ set by the training loop and decayed to 0 (ViTALiTy's and Castling-ViT's training-time
softmax branch): evaluation uses the linear kernel alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...attention import KernelLayer, kernel_factory, softmax_attention

__all__ = ["StudyNet", "KernelAttention", "ChannelMixer", "SoftmaxResidual", "CONTROL"]

CONTROL = "control"  # the variant name of the attention-free control


class SoftmaxResidual(nn.Module):
    """``kernel`` plus λ·softmax attention while training (λ = ``self.weight``, set from outside); ``kernel`` alone
    in eval mode or at λ = 0."""

    def __init__(self, kernel: nn.Module) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = 1.0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = self.kernel(q, k, v)
        if self.training and self.weight > 0:
            out = out + self.weight * softmax_attention(q, k, v, scale=q.shape[-1] ** -0.5)
        return out


class KernelAttention(nn.Module):
    """Multi-head attention with a zoo kernel: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, head_dim: int, kernel_layer: KernelLayer, residual_softmax: bool = False) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of the head dim {head_dim}")
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        kernel = kernel_layer(head_dim, self.heads)
        self.kernel = SoftmaxResidual(kernel) if residual_softmax else kernel

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.kernel(q, k, v)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ChannelMixer(nn.Module):
    """The control's mixer: C -> 2C -> C per token, no token mixing (the attention projections' 4C² budget)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float) -> None:
        super().__init__()
        self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.mixer = nn.LayerNorm(dim), mixer
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        x = x + self.local(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mixer(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class StudyNet(nn.Module):
    """The study's network (module docstring). ``kernel``: a zoo kernel name, or ``CONTROL`` for no attention."""

    def __init__(self, kernel: str = "softmax", *, num_classes: int = 10, in_chans: int = 1, img_size: int = 64,
                 dim: int = 64, depth: int = 2, head_dim: int = 16, mlp_ratio: float = 2.0,
                 residual_softmax: bool = False, **kernel_options) -> None:
        super().__init__()
        if img_size % 4:
            raise ValueError(f"img_size {img_size} must be a multiple of the stem's stride 4")
        if residual_softmax and kernel in (CONTROL, "softmax"):
            raise ValueError("a softmax residual goes with a linear kernel, not with softmax or the control")
        self.kernel = kernel
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim))
        self.pos = nn.Parameter(torch.zeros(1, dim, img_size // 4, img_size // 4))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = None if kernel == CONTROL else kernel_factory(kernel, **kernel_options)
        self.blocks = nn.ModuleList(
            _Block(dim, ChannelMixer(dim) if layer is None else
                   KernelAttention(dim, head_dim, layer, residual_softmax), mlp_ratio) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def set_residual_weight(self, weight: float) -> None:
        """λ of every ``SoftmaxResidual`` (a no-op without them)."""
        for m in self.modules():
            if isinstance(m, SoftmaxResidual):
                m.weight = float(weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1))
