"""Stages and classification head of EfficientViT (MIT) and QT-ViT, built from the blocks of ``conv`` and
``lite_mla``: ``StageSpec`` says how a stage is built (``B_STAGES``, ``L_STAGES``), ``make_stage`` builds it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .conv import ConvNormAct, DSConv, FusedMBConv, LayerType, MBConv, ResBlock
from .lite_mla import EfficientViTBlock

__all__ = ["B_STAGES", "L_STAGES", "EfficientViTHead", "EfficientViTStage", "StageSpec", "make_stage"]


class EfficientViTStage(nn.Module):
    """``blocks(downsample(x))``; stage 0 has no downsample (the stem does it)."""

    def __init__(self, downsample: Optional[nn.Module], blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        first = self.blocks[0] if len(self.blocks) else None
        if not (torch.jit.is_tracing() and isinstance(first, EfficientViTBlock) and first.attn.pos_embed is not None):
            return self.blocks(x)
        # A traced stage builds the positional embeddings' interpolation matrices once for all its blocks (they share
        # the map and the stored size): 2 dynamic Resizes per stage instead of per block in the exported graph.
        resize = first.attn.embedding_resize(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            x = block(x, resize)
        return x


class EfficientViTHead(nn.Module):
    """1x1 ConvNormAct -> global average pool -> Linear (no bias) + LayerNorm + act -> dropout -> Linear."""

    def __init__(
        self,
        in_chs: int,
        widths: tuple[int, int],
        num_classes: int,
        norm_layer: LayerType,
        act_layer: LayerType,
        ln_eps: float,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_conv = ConvNormAct(in_chs, widths[0], 1, norm_layer=norm_layer, act_layer=act_layer)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(widths[0], widths[1], bias=False)
        self.norm = nn.LayerNorm(widths[1], eps=ln_eps)
        self.act = act_layer()
        self.drop = nn.Dropout(drop_rate)
        self.num_features = widths[1]
        self.fc = nn.Linear(widths[1], num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        if num_classes > 0:
            ref = self.hidden.weight
            self.fc = nn.Linear(self.num_features, num_classes).to(ref.device, ref.dtype)
        else:
            self.fc = nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.in_conv(x)).flatten(1)
        x = self.act(self.norm(self.hidden(x)))
        if pre_logits:
            return x
        return self.fc(self.drop(x))


@dataclass(frozen=True)
class StageSpec:
    """How one stage is built.

    ``block`` is repeated (residual); ``down_block`` is the stage's first, non-residual block, which changes the
    width and applies the stage stride (None for stage 0, where the stem downsamples). ``fewer_norm``: bias and no
    BN on all but the last conv of those conv blocks. ``depth_includes_down``: the official B-series depth of stages
    1-2 counts the downsample block.
    """

    block: type
    expand_ratio: float = 4.0
    down_block: Optional[type] = None
    down_expand_ratio: float = 4.0
    fewer_norm: bool = False
    depth_includes_down: bool = False


B_STAGES = (
    StageSpec(DSConv, 1.0),
    StageSpec(MBConv, 4.0, MBConv, 4.0, depth_includes_down=True),
    StageSpec(MBConv, 4.0, MBConv, 4.0, depth_includes_down=True),
    StageSpec(EfficientViTBlock, 4.0, MBConv, 4.0, fewer_norm=True),
    StageSpec(EfficientViTBlock, 4.0, MBConv, 4.0, fewer_norm=True),
)
L_STAGES = (
    StageSpec(ResBlock, 1.0),
    StageSpec(FusedMBConv, 4.0, FusedMBConv, 16.0),
    StageSpec(FusedMBConv, 4.0, FusedMBConv, 16.0),
    StageSpec(MBConv, 4.0, MBConv, 16.0, fewer_norm=True),
    StageSpec(EfficientViTBlock, 6.0, MBConv, 24.0, fewer_norm=True),
)


def make_stage(
    spec: StageSpec, in_chs: int, width: int, n: int, stride: int, reduction: int, rates: Iterator[float],
    layers: dict[str, LayerType], attn_args: dict[str, Any],
) -> EfficientViTStage:
    """One stage: ``spec.down_block`` (width change and stride; None in stage 0) and ``n`` residual blocks, which
    take their drop-path rates from ``rates``. Attention blocks get ``attn_args`` (kernel factory, QT options)."""
    down = None
    if spec.down_block is not None:
        fewer = spec.fewer_norm or spec.block is EfficientViTBlock
        down = spec.down_block(in_chs, width, stride=stride, expand_ratio=spec.down_expand_ratio, fewer_norm=fewer,
                               **layers)
    blocks: list[nn.Module] = []
    for _ in range(n):
        if spec.block is EfficientViTBlock:
            pe = attn_args["pos_embed_size"]
            blocks.append(EfficientViTBlock(
                width, expand_ratio=spec.expand_ratio, drop_path=(next(rates), next(rates)), **layers,
                **dict(attn_args, pos_embed_size=None if pe is None else (math.ceil(pe / reduction),) * 2),
            ))
        else:
            # DSConv has no expansion (its depthwise conv keeps the width).
            expand = {} if spec.block is DSConv else dict(expand_ratio=spec.expand_ratio)
            blocks.append(spec.block(width, width, fewer_norm=spec.fewer_norm, residual=True, drop_path=next(rates),
                                     **layers, **expand))
    return EfficientViTStage(down, blocks)
