"""Small QT-ViT-Seg models for the embedded Fashion-MNIST scenes (``qtvit.data.scenes``: 11 classes, 256 x 256).

They train from scratch in minutes on a few CPU cores (docs/segmentation.md). The backbones
are qtvit_nano / qtvit_micro with B-series strides (2, 2, 2, 2, 2: features at 1/8, 1/16, 1/32, attention on the
1/16 and 1/32 maps) and positional embeddings stored for the 256 px canvas; the head is the B0 / B1 SegHead (width
32 / 64, one MBConv block).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..layers.conv import MBConv
from ..layers.seg_heads import SegHead
from ._registry import register_model
from .segmentation import SegmentationModel, _cfg, _create

__all__ = ["qtvit_seg_nano_scenes", "qtvit_seg_micro_scenes"]


def _scenes_seg(variant: str, backbone: str, width: int, pretrained: bool, **kwargs: Any) -> SegmentationModel:
    cfg = _cfg(None, "ade20k", paper_ids="openreview:V2e0A2XIPF", num_classes=11, input_size=(3, 256, 256),
               license=None)
    head = dict(width=width, depth=1, expand_ratio=4, block=MBConv, final_expand=None,
                norm_layer=nn.BatchNorm2d, act_layer=nn.Hardswish)
    defaults = dict(backbone=backbone, head_layer=SegHead, head_args=head, in_indices=(2, 3, 4), num_classes=11,
                    backbone_args=dict(strides=(2, 2, 2, 2, 2), pos_embed_size=256))
    return _create(variant, pretrained, cfg, defaults, **kwargs)


@register_model
def qtvit_seg_nano_scenes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """qtvit_nano (B strides) + a width-32 SegHead for the Fashion-MNIST scenes: 0.44 M params."""
    return _scenes_seg("qtvit_seg_nano_scenes", "qtvit_nano", 32, pretrained, **kwargs)


@register_model
def qtvit_seg_micro_scenes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """qtvit_micro (B strides) + a width-64 SegHead for the Fashion-MNIST scenes: 2.84 M params."""
    return _scenes_seg("qtvit_seg_micro_scenes", "qtvit_micro", 64, pretrained, **kwargs)
