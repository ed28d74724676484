"""Convolutional building blocks of EfficientViT (MIT) and QT-ViT.

Every block is a plain, typed ``nn.Module``: layers are passed as types (``norm_layer=nn.BatchNorm2d``,
``act_layer=nn.Hardswish``; use ``functools.partial`` for options such as ``eps`` or ``approximate="tanh"``).

Conventions shared by all blocks (they mirror the official EfficientViT code, so checkpoints map one to one):

- Convolutions pad ``kernel_size // 2`` ("same" padding for odd kernels), so a stride-2 conv maps a side ``n``
  to ``ceil(n / 2)``; any input size works, sizes that are not multiples of 32 simply give ceil-divided maps.
- Only the last conv of a block has no activation. With ``fewer_norm=True`` the convs before the last one carry a
  bias and no norm, and only the last conv is normalised (the official "fewer_norm" layout).
- ``residual=True`` adds the input back (``x + drop_path(block(x))``); it needs ``stride == 1`` and equal widths.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from .drop import DropPath
from .fold import fuse_conv_bn

__all__ = [
    "LayerType",
    "DropPath",
    "ConvNormAct",
    "ConvBlock",
    "DSConv",
    "MBConv",
    "FusedMBConv",
    "ResBlock",
    "out_size",
]

LayerType = Callable[..., nn.Module]


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))`` with same padding; ``norm_layer``/``act_layer`` None means no norm/activation."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm_layer: Optional[LayerType] = nn.BatchNorm2d,
        act_layer: Optional[LayerType] = None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold a BatchNorm into the conv (inference form); no-op without a BatchNorm."""
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            self.conv = fuse_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()


class ConvBlock(nn.Module):
    """Base of the conv blocks: a chain of ConvNormAct (``self.convs()``), optionally residual with DropPath."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, residual: bool, drop_path: float) -> None:
        super().__init__()
        if residual and (stride != 1 or in_chs != out_chs):
            raise ValueError(
                f"a residual block needs stride 1 and in_chs == out_chs, got stride={stride}, {in_chs}->{out_chs}"
            )
        self.residual = residual
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def convs(self) -> list[ConvNormAct]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs():
            y = conv(y)
        return x + self.drop_path(y) if self.residual else y


def _chain(
    n: int, norm_layer: Optional[LayerType], act_layer: Optional[LayerType], fewer_norm: bool
) -> list[dict]:
    """Per-conv (bias, norm, act) of an n-conv block: the last conv has no act; fewer_norm moves norms to the end."""
    out = []
    for i in range(n):
        last = i == n - 1
        norm = norm_layer if (last or not fewer_norm) else None
        out.append(dict(bias=norm is None, norm_layer=norm, act_layer=None if last else act_layer))
    return out


class DSConv(ConvBlock):
    """Depthwise-separable conv: k x k depthwise (stride) -> 1x1 pointwise."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: Optional[LayerType] = nn.BatchNorm2d,
        act_layer: Optional[LayerType] = nn.Hardswish,
        fewer_norm: bool = False,
        residual: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, residual, drop_path)
        a, b = _chain(2, norm_layer, act_layer, fewer_norm)
        self.conv_dw = ConvNormAct(in_chs, in_chs, kernel_size, stride, groups=in_chs, **a)
        self.conv_pw = ConvNormAct(in_chs, out_chs, 1, **b)

    def convs(self) -> list[ConvNormAct]:
        return [self.conv_dw, self.conv_pw]


class MBConv(ConvBlock):
    """Inverted residual: 1x1 expand (x expand_ratio) -> k x k depthwise (stride) -> 1x1 project."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        norm_layer: Optional[LayerType] = nn.BatchNorm2d,
        act_layer: Optional[LayerType] = nn.Hardswish,
        fewer_norm: bool = False,
        residual: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, residual, drop_path)
        mid = round(in_chs * expand_ratio)
        a, b, c = _chain(3, norm_layer, act_layer, fewer_norm)
        self.conv_expand = ConvNormAct(in_chs, mid, 1, **a)
        self.conv_dw = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, **b)
        self.conv_pw = ConvNormAct(mid, out_chs, 1, **c)

    def convs(self) -> list[ConvNormAct]:
        return [self.conv_expand, self.conv_dw, self.conv_pw]


class FusedMBConv(ConvBlock):
    """Fused inverted residual: k x k full conv expand (stride) -> 1x1 project."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        norm_layer: Optional[LayerType] = nn.BatchNorm2d,
        act_layer: Optional[LayerType] = nn.Hardswish,
        fewer_norm: bool = False,
        residual: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, residual, drop_path)
        mid = round(in_chs * expand_ratio)
        a, b = _chain(2, norm_layer, act_layer, fewer_norm)
        self.conv_expand = ConvNormAct(in_chs, mid, kernel_size, stride, **a)
        self.conv_pw = ConvNormAct(mid, out_chs, 1, **b)

    def convs(self) -> list[ConvNormAct]:
        return [self.conv_expand, self.conv_pw]


class ResBlock(ConvBlock):
    """Two k x k convs (the first strided), as in ResNet's basic block (the residual is the ``residual`` flag)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 1.0,
        norm_layer: Optional[LayerType] = nn.BatchNorm2d,
        act_layer: Optional[LayerType] = nn.Hardswish,
        fewer_norm: bool = False,
        residual: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, residual, drop_path)
        mid = round(in_chs * expand_ratio)
        a, b = _chain(2, norm_layer, act_layer, fewer_norm)
        self.conv1 = ConvNormAct(in_chs, mid, kernel_size, stride, **a)
        self.conv2 = ConvNormAct(mid, out_chs, kernel_size, **b)

    def convs(self) -> list[ConvNormAct]:
        return [self.conv1, self.conv2]


def out_size(size: int, stride: int) -> int:
    """Side of a same-padded, odd-kernel conv output: ``ceil(size / stride)``."""
    return math.ceil(size / stride)
