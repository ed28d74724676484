"""Official EfficientViT (mit-han-lab) and QT-ViT (AMD) checkpoint keys -> ``qtvit.models.efficientvit`` names.

``checkpoint_filter_fn`` is the map ``qtvit.checkpoints.load_checkpoint`` applies (it is
``EfficientViT.checkpoint_filter_fn``).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["checkpoint_filter_fn"]

# Sub-module names inside a block: official -> ours.
_LEAF_RENAMES = (
    (r"\binverted_conv\b", "conv_expand"),
    (r"\bspatial_conv\b", "conv_expand"),
    (r"\bdepth_conv\b", "conv_dw"),
    (r"\bpoint_conv\b", "conv_pw"),
)
# Inside LiteMLA: official -> ours.
_ATTN_RENAMES = (
    (r"^qkv\.conv\.weight$", "qkv.weight"),
    (r"^aggreg\.(\d+)\.0\.weight$", r"aggreg.\1.conv_dw.weight"),
    (r"^aggreg\.(\d+)\.1\.weight$", r"aggreg.\1.conv_pw.weight"),
    (r"^proj\.(conv|norm)\.(.+)$", r"proj.\1.\2"),
    (r"^ones_scale1$", "kernel.scale"),  # QT-ViT
    (r"^positional_encoding$", "pos_embed"),  # QT-ViT
    (r"^bn\.(.+)$", r"v_norm.\1"),  # QT-ViT shortcut BN
)
_HEAD_RENAMES = (
    (r"^head\.op_list\.0\.(conv|norm)\.(.+)$", r"head.in_conv.\1.\2"),
    (r"^head\.op_list\.2\.linear\.weight$", "head.hidden.weight"),
    (r"^head\.op_list\.2\.norm\.(.+)$", r"head.norm.\1"),
    (r"^head\.op_list\.3\.linear\.(.+)$", r"head.fc.\1"),
)


def _sub(rules: Sequence[tuple[str, str]], s: str, first_only: bool = True) -> Optional[str]:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, s)
        if n and first_only:
            return new
        s = new
    return None if first_only else s


def _map_block(prefix: str, rest: str) -> Optional[str]:
    """Map the part after ``op_list.{j}.`` of an official block key."""
    if rest.startswith("main."):  # a conv block wrapped in ResidualBlock
        return prefix + _sub(_LEAF_RENAMES, rest[len("main."):], first_only=False)
    if rest.startswith("context_module.main."):
        attn = _sub(_ATTN_RENAMES, rest[len("context_module.main."):])
        return None if attn is None else f"{prefix}attn.{attn}"
    if rest.startswith("local_module.main."):
        return f"{prefix}ffn." + _sub(_LEAF_RENAMES, rest[len("local_module.main."):], first_only=False)
    return None


def _map_official_key(key: str, large: bool) -> Optional[str]:
    if key.startswith("head."):
        return _sub(_HEAD_RENAMES, key)
    m = re.match(r"^backbone\.input_stem\.op_list\.(\d+)\.(.+)$", key)
    if m and not large:  # EfficientViTBackbone: input_stem is our stage 0 (and stem)
        stage, op, rest = 0, int(m.group(1)), m.group(2)
    else:
        m = re.match(r"^backbone\.stages\.(\d+)\.op_list\.(\d+)\.(.+)$", key)
        if not m:
            return None
        # B: backbone.stages.{s} is our stage s + 1. L: backbone.stages.0 holds the stem conv and its ResBlocks.
        stage, op, rest = int(m.group(1)) + (0 if large else 1), int(m.group(2)), m.group(3)
    if stage == 0 and op == 0:  # the stem ConvLayer
        mm = re.match(r"^(conv|norm)\.(.+)$", rest)
        return f"stem.{mm.group(1)}.{mm.group(2)}" if mm else None
    if op == 0:  # first op of stages 1-4: the stride-2 block
        return _map_block(f"stages.{stage}.downsample.", rest) if rest.startswith("main.") else None
    return _map_block(f"stages.{stage}.blocks.{op - 1}.", rest)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> dict:
    """Convert an official mit-han-lab EfficientViT or AMD QT-ViT classification ``state_dict`` to qtvit names.

    The mapping is by name (e.g. ``backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight`` ->
    ``stages.3.blocks.0.attn.qkv.weight``; ``ones_scale1`` -> ``attn.kernel.scale``; ``positional_encoding`` ->
    ``attn.pos_embed``; QT ``bn`` -> ``attn.v_norm``). A dict already in qtvit naming is returned unchanged; a
    ``module.`` prefix (DDP) is stripped; keys that match no rule are passed through so the loader reports them.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if not any(k.startswith(("backbone.", "head.op_list.")) for k in state_dict):
        return state_dict
    large = "backbone.input_stem.op_list.0.conv.weight" not in state_dict
    out = {}
    for key, value in state_dict.items():
        new = _map_official_key(key, large)
        out[new if new is not None else key] = value
    return out
