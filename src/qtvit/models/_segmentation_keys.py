"""Official EfficientViT-Seg (mit-han-lab) and QT-ViT-Seg (AMD) checkpoint keys -> ``qtvit.models.segmentation``
names. ``checkpoint_filter_fn`` is ``SegmentationModel.checkpoint_filter_fn``, applied by
``qtvit.checkpoints.load_checkpoint``.

The official model is ``backbone`` (the classifier's backbone, same keys) + ``head`` (a ``DAGBlock``):

- ``head.input_ops.{j}`` projects the j-th input, deepest first (stage4, stage3, stage2); the upsampled ones are
  ``OpSequential([ConvLayer, UpSampleLayer])`` (keys ``input_ops.{j}.op_list.0.*``), the last is a bare ConvLayer
  (``input_ops.{j}.*``). Ours are ``head.lateral.{i}``, shallowest first: i = n - 1 - j.
- ``head.middle.op_list.{i}.main.*`` are residual MBConv / FusedMBConv blocks: ``head.blocks.{i}.*`` with the
  block renames of the backbone (``inverted_conv``/``spatial_conv`` -> ``conv_expand``, ``depth_conv`` -> ``conv_dw``,
  ``point_conv`` -> ``conv_pw``).
- ``head.output_ops.0.op_list.{k}``: with a final expansion, k = 0 is that ConvLayer (``head.expand``) and k = 1 the
  classifier; without, k = 0 is the classifier. The classifier's ``conv.{weight,bias}`` -> ``head.classifier.*``.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn as nn

from ._efficientvit_keys import checkpoint_filter_fn as backbone_filter_fn

__all__ = ["checkpoint_filter_fn"]

_BLOCK_LEAVES = {"inverted_conv": "conv_expand", "spatial_conv": "conv_expand", "depth_conv": "conv_dw",
                 "point_conv": "conv_pw"}


def _map_head_key(key: str, n_inputs: int, has_expand: bool) -> Optional[str]:
    m = re.match(r"^head\.input_ops\.(\d+)\.(?:op_list\.0\.)?((?:conv|norm)\..+)$", key)
    if m:
        return f"head.lateral.{n_inputs - 1 - int(m.group(1))}.{m.group(2)}"
    m = re.match(r"^head\.middle\.op_list\.(\d+)\.main\.(\w+)\.((?:conv|norm)\..+)$", key)
    if m and m.group(2) in _BLOCK_LEAVES:
        return f"head.blocks.{m.group(1)}.{_BLOCK_LEAVES[m.group(2)]}.{m.group(3)}"
    m = re.match(r"^head\.output_ops\.0\.op_list\.(\d+)\.((conv|norm)\.(.+))$", key)
    if m:
        if has_expand and m.group(1) == "0":
            return f"head.expand.{m.group(2)}"
        return f"head.classifier.{m.group(4)}" if m.group(3) == "conv" else None
    return None


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> dict:
    """Convert an official EfficientViT-Seg / QT-ViT-Seg ``state_dict`` (keys ``backbone.*``, ``head.*``) to qtvit
    names, e.g. ``head.input_ops.0.op_list.0.conv.weight`` -> ``head.lateral.2.conv.weight`` and
    ``backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight`` ->
    ``backbone.stages.3.blocks.0.attn.qkv.weight``. A dict in qtvit naming is returned unchanged; a ``module.``
    prefix is stripped; keys that match no rule are kept, so the loader reports them."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if not any(k.startswith("head.input_ops.") for k in state_dict):
        return state_dict
    backbone = backbone_filter_fn({k: v for k, v in state_dict.items() if k.startswith("backbone.")})
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    inputs = {int(m.group(1)) for k in state_dict if (m := re.match(r"^head\.input_ops\.(\d+)\.", k))}
    has_expand = any(k.startswith("head.output_ops.0.op_list.1.") for k in state_dict)
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        new = _map_head_key(key, max(inputs) + 1, has_expand)
        out[new if new is not None else key] = value
    return out
