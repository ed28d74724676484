"""Semantic segmentation heads: EfficientViT's SegHead, UperNet's decoder (PPM + FPN) and the auxiliary FCN head.

Every head takes the backbone's feature maps as a list ordered shallow to deep (strides rising, as
``forward_intermediates`` returns them) and returns class logits at the stride of its shallowest input. Any input
size works: the maps are resized to the shallowest map's size, never by a fixed factor, so sides that are not
multiples of 32 (ceil-divided stage maps) line up.

- ``SegHead`` (mit-han-lab EfficientViT ``seg.py``): a 1x1 conv + BN per input, bicubic upsampling to the
  shallowest map, sum, ``depth`` residual MBConv / FusedMBConv blocks, an optional 1x1 expansion conv + BN + act,
  then a 1x1 classifier with bias.
- ``UperHead`` (UperNet, Xiao et al. 2018, as mmsegmentation's ``UPerHead``): a pyramid pooling module on the
  deepest map, lateral 1x1 convs on the others, a top-down path (bilinear upsampling and addition), a 3x3 conv per
  level, bilinear upsampling of every level to the shallowest one, concatenation, a 3x3 fusion conv, dropout and a
  1x1 classifier. Convs are conv + BN + ReLU without bias.
- ``FCNHead``: the auxiliary head UperNet is trained with (3x3 conv + BN + ReLU, dropout, 1x1 classifier).

The pyramid pooling averages with a pooling matrix (``adaptive_avg_pool2d``), equal to
``nn.AdaptiveAvgPool2d`` but traceable for any input size, so an ONNX export keeps free height and width.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .conv import ConvNormAct, LayerType, MBConv
from .resize import resize_to

__all__ = ["FCNHead", "PyramidPooling", "SegHead", "UperHead", "adaptive_avg_pool2d"]


def _pool_matrix(n, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, n) matrix of adaptive average pooling along one axis: bin i averages the positions
    ``floor(i n / bins) <= p < ceil((i + 1) n / bins)``."""
    i = torch.arange(bins, device=like.device)
    start = (i * n) // bins
    end = ((i + 1) * n + bins - 1) // bins
    pos = torch.arange(n, device=like.device)
    mask = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return mask.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` written as two matrix products, so that a traced graph holds for every
    input size (the ONNX exporter turns the built-in one into a pooling with the trace's fixed kernel)."""
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    rows = _pool_matrix(x.shape[-2], bins, x)
    cols = _pool_matrix(x.shape[-1], bins, x)
    return rows @ x @ cols.transpose(0, 1)


class SegHead(nn.Module):
    """EfficientViT's segmentation head (mit-han-lab ``SegHead``), at the stride of its shallowest input.

    Args:
        in_chs: channels of the input maps, shallow to deep (e.g. stages 2, 3, 4: strides 8, 16, 32).
        num_classes: classifier outputs (0: no classifier; the head returns its last features).
        width: head width (``head_width``): every input is projected to it by a 1x1 conv + BN.
        depth: number of residual middle blocks.
        expand_ratio: expansion of the middle blocks.
        block: middle block type, ``MBConv`` (B series) or ``FusedMBConv`` (L series); full BN, no bias.
        final_expand: if given, a 1x1 conv + BN + act to ``width * final_expand`` channels before the classifier.
        norm_layer, act_layer: BatchNorm and activation types (``functools.partial`` for eps or options).
        drop_rate: dropout (2-d) before the classifier (0 in every official configuration).
        upsample_mode: interpolation of the deeper maps ("bicubic" as the official head).
    """

    def __init__(
        self,
        in_chs: Sequence[int],
        num_classes: int,
        width: int,
        depth: int,
        expand_ratio: float = 4.0,
        block: LayerType = MBConv,
        final_expand: Optional[int] = None,
        norm_layer: LayerType = nn.BatchNorm2d,
        act_layer: LayerType = nn.Hardswish,
        drop_rate: float = 0.0,
        upsample_mode: str = "bicubic",
    ) -> None:
        super().__init__()
        self.upsample_mode = upsample_mode
        self.lateral = nn.ModuleList(
            ConvNormAct(c, width, 1, norm_layer=norm_layer, act_layer=None) for c in in_chs
        )
        self.blocks = nn.Sequential(*[
            block(width, width, expand_ratio=expand_ratio, norm_layer=norm_layer, act_layer=act_layer, residual=True)
            for _ in range(depth)
        ])
        self.num_features = width * final_expand if final_expand else width
        self.expand = (ConvNormAct(width, self.num_features, 1, norm_layer=norm_layer, act_layer=act_layer)
                       if final_expand else nn.Identity())
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: none)."""
        ref = self.lateral[0].conv.weight
        self.classifier = (nn.Conv2d(self.num_features, num_classes, 1).to(ref.device, ref.dtype)
                           if num_classes > 0 else nn.Identity())

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = None
        for proj, f in zip(self.lateral, features):
            y = resize_to(proj(f), size, self.upsample_mode)
            x = y if x is None else x + y
        x = self.expand(self.blocks(x))
        return self.classifier(self.drop(x))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average pooling to ``bins`` x ``bins`` for each scale, a 1x1 conv + BN + ReLU,
    bilinear upsampling back; returns the input concatenated with every branch."""

    def __init__(
        self, in_chs: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6),
        norm_layer: LayerType = nn.BatchNorm2d, act_layer: LayerType = nn.ReLU,
    ) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(
            ConvNormAct(in_chs, channels, 1, norm_layer=norm_layer, act_layer=act_layer) for _ in self.scales
        )
        self.out_chs = in_chs + len(self.scales) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [resize_to(conv(adaptive_avg_pool2d(x, s)), size)
                      for s, conv in zip(self.scales, self.branches)]
        return torch.cat(outs, dim=1)


class UperHead(nn.Module):
    """UperNet's decoder (PPM + FPN), at the stride of its shallowest input (4 for the usual strides 4-32).

    Args:
        in_chs: channels of the input maps, shallow to deep.
        num_classes: classifier outputs (0: no classifier; the head returns the fused features).
        channels: decoder width (512 in UperNet's ADE20K setting).
        pool_scales: PPM bin counts.
        norm_layer, act_layer: norm and activation of every conv (BN + ReLU).
        drop_rate: dropout (2-d) before the classifier (0.1 in UperNet's setting).
    """

    def __init__(
        self,
        in_chs: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm_layer: LayerType = nn.BatchNorm2d,
        act_layer: LayerType = nn.ReLU,
        drop_rate: float = 0.1,
    ) -> None:
        super().__init__()
        layers = dict(norm_layer=norm_layer, act_layer=act_layer)
        self.ppm = PyramidPooling(in_chs[-1], channels, pool_scales, **layers)
        self.ppm_conv = ConvNormAct(self.ppm.out_chs, channels, 3, **layers)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1, **layers) for c in in_chs[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, **layers) for _ in in_chs[:-1])
        self.fuse_conv = ConvNormAct(len(in_chs) * channels, channels, 3, **layers)
        self.num_features = channels
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: none)."""
        ref = self.fuse_conv.conv.weight
        self.classifier = (nn.Conv2d(self.num_features, num_classes, 1).to(ref.device, ref.dtype)
                           if num_classes > 0 else nn.Identity())

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [conv(f) for conv, f in zip(self.lateral, features[:-1])]
        levels.append(self.ppm_conv(self.ppm(features[-1])))
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level gets the (upsampled) one above it
            levels[i - 1] = levels[i - 1] + resize_to(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        x = self.fuse_conv(torch.cat([resize_to(o, size) for o in outs], dim=1))
        return self.classifier(self.drop(x))


class FCNHead(nn.Module):
    """The auxiliary head of UperNet training: ``num_convs`` 3x3 conv + BN + ReLU, dropout, 1x1 classifier, on one
    map (input list of length one, or a tensor)."""

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        norm_layer: LayerType = nn.BatchNorm2d,
        act_layer: LayerType = nn.ReLU,
        drop_rate: float = 0.1,
    ) -> None:
        super().__init__()
        convs = []
        for i in range(num_convs):
            convs.append(ConvNormAct(in_chs if i == 0 else channels, channels, 3, norm_layer=norm_layer,
                                     act_layer=act_layer))
        self.convs = nn.Sequential(*convs)
        self.num_features = channels if num_convs else in_chs
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: none)."""
        ref = next(self.parameters(), None)
        kw = dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
        self.classifier = nn.Conv2d(self.num_features, num_classes, 1, **kw) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            (x,) = x
        return self.classifier(self.drop(self.convs(x)))
