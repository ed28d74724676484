"""EfficientViT (MIT, B0-B3 and L1-L3) and QT-ViT-1...6, one model class configured per variant.

QT-ViT (Xu et al., NeurIPS 2024) is EfficientViT with, in every attention block, the "qt" kernel, an absolute
positional embedding on K and the ``GELU(BN(v))`` shortcut (see ``qtvit.layers.lite_mla``). QT-ViT-1/2/3 are
built on B1/B2/B3, QT-ViT-4/5/6 on L1/L2/L3.

Registered models (``qtvit.create_model(name, ...)``):

- ``efficientvit_b0`` ... ``efficientvit_b3``, ``efficientvit_l1`` ... ``efficientvit_l3``: the official MIT
  networks (BN/LN eps 1e-5 for B, 1e-7 for L; Hardswish for B, tanh-GELU for L).
- ``qtvit_1`` ... ``qtvit_6``: the official AMD QT-ViT networks.
- Small variants for 28-32 px inputs (Fashion-MNIST, CIFAR) and quick CPU training, no pretrained weights:
  ``efficientvit_nano`` (B-style, widths 8-128, one block per stage, 0.47 M params with 10 classes),
  ``qtvit_nano`` (the same with the QT-ViT attention, 0.48 M) and ``qtvit_micro`` (widths 16-256, B0 depths,
  3.0 M params); ``efficientvit_pico`` / ``qtvit_pico`` (widths 16-64, strides 2, 2, 1, 1, 2: one attention block
  on the 7x7 map of a 28 px input) are the main job's quick Fashion-MNIST models.
  Only the stem, stage 2 and stage 4 downsample (strides 2, 1, 2, 1, 2), so a 28 px input gives 14, 14, 7, 7
  and 4 px stage maps (reductions 2, 2, 4, 4, 8); attention runs on the 7x7 and 4x4 maps. ``in_chans=1`` works
  for grey images.

Every constructor is ``fn(pretrained=False, **kwargs)``: the keyword arguments of ``EfficientViT`` override the
variant's (``num_classes``, ``in_chans``, ``drop_path_rate``...). ``kernel=`` swaps the attention kernel of every
LiteMLA for any ``qtvit.attention.list_kernels()`` name (``kernel_options=dict(...)`` passes its options), e.g.
``create_model("qtvit_1", kernel="relu")``; ``pretrained=True`` loads the official weights.

Input sizes: all convs pad "same" (``k // 2``), so each stride-2 stage maps a side n to ceil(n / 2); any H x W
works (e.g. 70 x 50 gives 35x25, 18x13, 9x7, 5x4, 3x2 stage maps), square or not. The QT positional embedding
is stored for a ``pos_embed_size`` input (224 px: 14x14 / 7x7 maps; 28 or 32 px for the small variants) and resized
bicubically to other maps, as in the official code.

Inference form: ``qtvit.models.inference.inference_form(model, input_size)`` (or ``model.fuse(input_size)`` in
place) folds every
BatchNorm that follows a conv into it (the head's too), turns the QT shortcut BN into a per-channel affine and
caches the positional embeddings resized for ``input_size``.

Official checkpoints: ``EfficientViT.checkpoint_filter_fn(state_dict, model)`` maps the keys of the mit-han-lab
EfficientViT and AMD QT-ViT ``state_dict`` to this module's names.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..attention import kernel_factory
from ..constants import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from ..layers.conv import ConvNormAct, LayerType, out_size
from ..layers.efficientvit_blocks import B_STAGES, L_STAGES, EfficientViTHead, StageSpec, make_stage
from ..layers.fold import inference_memory_format
from ..layers.lite_mla import EfficientViTBlock, KernelLayer, LiteMLA
from ..layers.weight_init import trunc_normal_init_, zero_init_last_
from ._builder import build_model_with_cfg
from ._efficientvit_keys import checkpoint_filter_fn
from ._features import feature_take_indices
from ._registry import register_model, register_pretrained

__all__ = ["EfficientViT", "StageSpec", "B_STAGES", "L_STAGES", "checkpoint_filter_fn"]

GELU_TANH = partial(nn.GELU, approximate="tanh")


# --------------------------------------------------------------------------------------------------------------------
# Model (stages and head: qtvit.layers.efficientvit_blocks)
# --------------------------------------------------------------------------------------------------------------------
class EfficientViT(nn.Module):
    """EfficientViT B/L backbone + classification head; QT-ViT with ``kernel="qt", pos_embed=True, v_shortcut=True``.

    Args:
        widths: channels of stages 0-4.
        depths: official depth list (see ``StageSpec.depth_includes_down``).
        head_widths: (conv width, hidden width) of the head.
        stages: five ``StageSpec`` (``B_STAGES`` or ``L_STAGES``).
        head_dim: attention head dimension d.
        strides: stride of the stem (stage 0) and of stages 1-4.
        norm_layer, norm_eps: BatchNorm type and eps (also the head LayerNorm's eps).
        act_layer: activation type (Hardswish for B, tanh-GELU for L).
        kernel: attention kernel of every LiteMLA, a ``qtvit.attention.list_kernels()`` name (or a factory
            ``(head_dim, num_heads) -> nn.Module``); resolved once by ``qtvit.attention.kernel_factory``.
        kernel_options: that kernel's options (a dict), e.g. ``dict(scale=2.0)`` for "qt".
        pos_embed: QT-ViT positional embedding on K.
        v_shortcut: QT-ViT ``GELU(BN(v))`` shortcut.
        pos_embed_size: input side in pixels the positional embeddings are stored for (each attention stage keeps
            its ``ceil(pos_embed_size / reduction)`` map; other inputs resize it bicubically).
        zero_init_last: start every residual branch at zero (the official ``--last_gamma 0``; off by default, as
            the official recipes train).
    """

    # Parameters a QT-ViT model has and an EfficientViT checkpoint lacks: loading one into the other reports them
    # as new (read by qtvit.checkpoints.load_checkpoint).
    new_parameter_patterns = (r"\.attn\.pos_embed$", r"\.attn\.v_norm\.", r"\.attn\.kernel\.scale$")

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        head_widths: tuple[int, int],
        stages: Sequence[StageSpec] = B_STAGES,
        head_dim: int = 32,
        strides: Sequence[int] = (2, 2, 2, 2, 2),
        norm_layer: LayerType = nn.BatchNorm2d,
        norm_eps: float = 1e-5,
        act_layer: LayerType = nn.Hardswish,
        kernel: Union[str, KernelLayer] = "relu",
        kernel_options: Optional[dict[str, Any]] = None,
        pos_embed: bool = False,
        v_shortcut: bool = False,
        pos_embed_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if not (len(widths) == len(depths) == len(stages) == len(strides) == 5):
            raise ValueError("widths, depths, stages and strides must each have 5 entries (stages 0-4)")
        if kernel_options is not None and not isinstance(kernel_options, dict):
            raise ValueError(f"kernel_options must be a dict of the kernel's options, got {type(kernel_options)}")
        norm = partial(norm_layer, eps=norm_eps)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.kernel_name = getattr(kernel, "name", kernel)
        self.pos_embed_size = pos_embed_size
        self.grad_checkpointing = False
        attn_args = dict(
            kernel_layer=kernel_factory(kernel, **(kernel_options or {})), v_shortcut=v_shortcut, head_dim=head_dim,
            pos_embed_size=pos_embed_size if pos_embed else None,
        )

        # Repeated blocks per stage, and one drop-path rate per residual branch, rising linearly (as the official
        # apply_droppath): conv blocks have one branch, attention blocks two.
        n_blocks = [d - 1 if s.depth_includes_down else d for d, s in zip(depths, stages)]
        n_branches = sum(n * (2 if s.block is EfficientViTBlock else 1) for n, s in zip(n_blocks, stages))
        rates = iter([drop_path_rate * (i + 1) / max(n_branches, 1) for i in range(n_branches)])

        self.stem = ConvNormAct(in_chans, widths[0], 3, strides[0], norm_layer=norm, act_layer=act_layer)
        self.stages = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        in_chs, reduction = widths[0], 1
        for i, (spec, w, n, stride) in enumerate(zip(stages, widths, n_blocks, strides)):
            reduction *= stride
            if spec.down_block is None and i > 0:
                raise ValueError(f"stage {i} needs a down_block")
            layers = dict(norm_layer=norm, act_layer=act_layer)
            self.stages.append(make_stage(spec, in_chs, w, n, stride, reduction, rates, layers, attn_args))
            self.feature_info.append(dict(num_chs=w, reduction=reduction, module=f"stages.{i}"))
            in_chs = w

        self.num_features = in_chs
        self.head = EfficientViTHead(in_chs, tuple(head_widths), num_classes, norm, act_layer, norm_eps, drop_rate)
        self.head_hidden_size = self.head.num_features
        self.apply(trunc_normal_init_)  # the official init; the QT pos-embed stays 0, s stays 1
        if zero_init_last:
            zero_init_last_(self)

    # --- timm-style API --------------------------------------------------------------------------------------------
    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> dict:
        """Official EfficientViT / QT-ViT state_dict -> qtvit names (see the module-level ``checkpoint_filter_fn``)."""
        return checkpoint_filter_fn(state_dict, model)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the last Linear by a new one for ``num_classes`` (0: identity, the head returns pre-logits)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of storing its activations (saves memory, same result)."""
        self.grad_checkpointing = enable

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> the stage-4 map (B, num_features, ceil(H/32), ceil(W/32)) for stride 32."""
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Stage-4 map -> logits, or the (B, head_hidden_size) hidden features when ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, Sequence[int], None] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Stage maps ``stage0..stage4`` (strides 2..32 for the official variants), timm semantics.

        ``indices``: None (all), an int n (the last n) or a list of stage indices. ``norm`` is accepted for API
        compatibility (there is no final norm). ``stop_early`` skips the stages after the last one asked for.
        Returns the list of maps if ``intermediates_only`` else ``(final_features, list)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; use 'NCHW'")
        take = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: take[-1] + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int], None] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last index asked for (and the classifier if ``prune_head``)."""
        take = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: take[-1] + 1]
        self.feature_info = self.feature_info[: take[-1] + 1]
        if prune_head:
            self.head = nn.Identity()
            self.num_classes = 0
        return take

    # --- inference form --------------------------------------------------------------------------------------------
    def stage_sizes(self, input_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of each stage map for an input of ``input_size`` (same padding: ceil division per stride)."""
        h, w = input_size
        h, w = out_size(h, self.stem.conv.stride[0]), out_size(w, self.stem.conv.stride[1])
        sizes = []
        for stage in self.stages:
            if not isinstance(stage.downsample, nn.Identity):
                s = stage.downsample.convs()
                stride = max(c.conv.stride[0] for c in s)
                h, w = out_size(h, stride), out_size(w, stride)
            sizes.append((h, w))
        return sizes

    @torch.no_grad()
    def fuse(self, input_size: Optional[tuple[int, int]] = None) -> "EfficientViT":
        """In place: fold BatchNorms into convs, the QT shortcut BN into an affine, and (if ``input_size``) cache
        the positional embeddings for that input. Call on an eval-mode model; the result is for inference only."""
        for m in list(self.modules()):
            if isinstance(m, (ConvNormAct, LiteMLA)):
                m.fuse()
        if input_size is not None:
            for (h, w), stage in zip(self.stage_sizes(tuple(input_size)), self.stages):
                for m in stage.modules():
                    if isinstance(m, LiteMLA):
                        m.cache_pos_embed((h, w))
        return inference_memory_format(self)


# --------------------------------------------------------------------------------------------------------------------
# Configurations and registered constructors
# --------------------------------------------------------------------------------------------------------------------
_HF = "https://huggingface.co/han-cai/efficientvit-cls/resolve/main/"
_QT_GDRIVE = {
    "qtvit_1": "https://drive.google.com/file/d/11TNSXvfNmNYbehHbmJDyxzEz7DNlezNK/view",
    "qtvit_2": "https://drive.google.com/file/d/1DUzJ7-nCWHZrMfSX4MEXbAC4GGabQ5GA/view",
    "qtvit_3": "https://drive.google.com/file/d/1uvQr0tE0Jy7VLCLFYraNKysPshlfw-La/view",
    "qtvit_5": "https://drive.google.com/file/d/1YKOFu8PYQvHM89ZKB9P_2blcHInGKS3H/view",
    "qtvit_6": "https://drive.google.com/file/d/1MnAgjk_uOD6wH7QyCkF4z4bxJXQf4PTr/view",
}

_B = dict(stages=B_STAGES, act_layer=nn.Hardswish, norm_eps=1e-5)
_L = dict(stages=L_STAGES, act_layer=GELU_TANH, norm_eps=1e-7, head_dim=32)
_QT = dict(kernel="qt", pos_embed=True, v_shortcut=True)
_ARCHS: dict[str, dict[str, Any]] = {
    "b0": dict(_B, widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(1024, 1280)),
    "b1": dict(_B, widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16, head_widths=(1536, 1600)),
    "b2": dict(_B, widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32, head_widths=(2304, 2560)),
    "b3": dict(_B, widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32, head_widths=(2304, 2560)),
    "l1": dict(_L, widths=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 6), head_widths=(3072, 3200)),
    "l2": dict(_L, widths=(32, 64, 128, 256, 512), depths=(1, 2, 2, 8, 8), head_widths=(3072, 3200)),
    "l3": dict(_L, widths=(64, 128, 256, 512, 1024), depths=(1, 2, 2, 8, 8), head_widths=(6144, 6400)),
    # Small variants for 28-32 px images: stages 1 and 3 keep the resolution.
    "nano": dict(_B, widths=(8, 16, 32, 64, 128), depths=(1, 1, 1, 1, 1), head_dim=16, head_widths=(256, 256),
                 strides=(2, 1, 2, 1, 2), pos_embed_size=28),
    "micro": dict(_B, widths=(16, 32, 64, 128, 256), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(512, 512),
                  strides=(2, 1, 2, 1, 2), pos_embed_size=32),
    # The main job's model: trains to 90% on Fashion-MNIST in minutes on 2 CPU cores (one attention block, 7x7).
    "pico": dict(_B, widths=(16, 24, 32, 48, 64), depths=(0, 1, 1, 2, 1), head_dim=16, head_widths=(128, 128),
                 strides=(2, 2, 1, 1, 2), pos_embed_size=28),
}
_SMALL = ("nano", "micro", "pico")


def _cfg(url: Optional[str] = None, **kwargs: Any) -> dict[str, Any]:
    # eval protocol of the official eval scripts: resize the short side to size / crop_pct (bicubic), centre crop
    cfg = dict(
        url=url, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=1.0,
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="stem.conv",
        classifier="head.fc", license="apache-2.0", paper_ids="arXiv:2205.14756",
        origin_url="https://github.com/mit-han-lab/efficientvit",
    )
    cfg.update(kwargs)
    return cfg


def _qt_cfg(i: int) -> dict[str, Any]:
    # QT-ViT weights are on Google Drive (no direct url): the builder takes `file` from the cache, or says where to
    # get it. The official QT-ViT eval script crops with ratio 0.95 for every model.
    return _cfg(
        None, file=f"qtvit_{i}_r224.pt" if f"qtvit_{i}" in _QT_GDRIVE else None, crop_pct=0.95,
        origin_url=_QT_GDRIVE.get(f"qtvit_{i}", "https://github.com/AMD-AIG-AIMA/AMD_QTViT"),
        paper_ids="openreview:V2e0A2XIPF",
    )


# The small variants have no pretrained weights; their statistics are Fashion-MNIST's, repeated per channel.
_SMALL_CFG = _cfg(mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, paper_ids=None, origin_url=None)
_PRETRAINED_CFGS: dict[str, dict[str, Any]] = {
    "efficientvit_b0": _cfg(),  # no official ImageNet weights
    "efficientvit_b1": _cfg(_HF + "efficientvit_b1_r224.pt", crop_pct=0.95),
    "efficientvit_b2": _cfg(_HF + "efficientvit_b2_r224.pt"),
    "efficientvit_b3": _cfg(_HF + "efficientvit_b3_r224.pt"),
    "efficientvit_l1": _cfg(_HF + "efficientvit_l1_r224.pt"),
    "efficientvit_l2": _cfg(_HF + "efficientvit_l2_r224.pt"),
    "efficientvit_l3": _cfg(_HF + "efficientvit_l3_r224.pt"),
    **{f"qtvit_{i}": _qt_cfg(i) for i in range(1, 7)},  # QT-ViT-4 has no released weights
    **{f"{family}_{arch}": _SMALL_CFG for family in ("efficientvit", "qtvit") for arch in _SMALL},
}
register_pretrained(_PRETRAINED_CFGS)


def _input_cfg(variant: str, in_chans: int, pos_embed_size: int) -> dict[str, Any]:
    """The variant's pretrained_cfg at the size its positional embeddings are stored for."""
    cfg = dict(_PRETRAINED_CFGS[variant], pool_size=(math.ceil(pos_embed_size / 32),) * 2)
    channels = cfg["input_size"][0]
    if variant.split("_")[-1] in _SMALL:  # the final map of strides 2, 1, 2, 1, 2 (or 2, 2, 1, 1, 2) is n / 8
        channels, cfg["pool_size"] = in_chans, (math.ceil(pos_embed_size / 8),) * 2
        cfg.update(mean=cfg["mean"] * in_chans, std=cfg["std"] * in_chans)
    cfg["input_size"] = (channels, pos_embed_size, pos_embed_size)
    return cfg


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    if "img_size" in kwargs:
        raise ValueError(f"{variant}: img_size was renamed pos_embed_size (the input side in pixels the QT positional "
                         "embeddings are stored for); pass pos_embed_size=")
    cfg = _input_cfg(variant, kwargs.get("in_chans", 3), kwargs.get("pos_embed_size", 224))
    return build_model_with_cfg(EfficientViT, variant, pretrained, pretrained_cfg=cfg, **kwargs)


def _qt(arch: str) -> dict[str, Any]:
    return dict(_ARCHS[arch], **_QT)


@register_model
def efficientvit_b0(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-B0 (MIT): 3.41 M params."""
    return _create("efficientvit_b0", pretrained, **dict(_ARCHS["b0"], **kwargs))


@register_model
def efficientvit_b1(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-B1 (MIT): 9.10 M params, 79.4% ImageNet top-1 at 224."""
    return _create("efficientvit_b1", pretrained, **dict(_ARCHS["b1"], **kwargs))


@register_model
def efficientvit_b2(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-B2 (MIT): 24.33 M params, 82.1% ImageNet top-1 at 224."""
    return _create("efficientvit_b2", pretrained, **dict(_ARCHS["b2"], **kwargs))


@register_model
def efficientvit_b3(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-B3 (MIT): 48.65 M params, 83.5% ImageNet top-1 at 224."""
    return _create("efficientvit_b3", pretrained, **dict(_ARCHS["b3"], **kwargs))


@register_model
def efficientvit_l1(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-L1 (MIT): 52.65 M params, 84.5% ImageNet top-1 at 224."""
    return _create("efficientvit_l1", pretrained, **dict(_ARCHS["l1"], **kwargs))


@register_model
def efficientvit_l2(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-L2 (MIT): 63.71 M params, 85.1% ImageNet top-1 at 224."""
    return _create("efficientvit_l2", pretrained, **dict(_ARCHS["l2"], **kwargs))


@register_model
def efficientvit_l3(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """EfficientViT-L3 (MIT): 246.04 M params, 85.8% ImageNet top-1 at 224."""
    return _create("efficientvit_l3", pretrained, **dict(_ARCHS["l3"], **kwargs))


@register_model
def qtvit_1(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-1 (on EfficientViT-B1): 9.35 M params, 79.6% ImageNet top-1."""
    return _create("qtvit_1", pretrained, **dict(_qt("b1"), **kwargs))


@register_model
def qtvit_2(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-2 (on EfficientViT-B2): 24.86 M params, 82.5% ImageNet top-1."""
    return _create("qtvit_2", pretrained, **dict(_qt("b2"), **kwargs))


@register_model
def qtvit_3(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-3 (on EfficientViT-B3): 49.70 M params, 83.9% ImageNet top-1."""
    return _create("qtvit_3", pretrained, **dict(_qt("b3"), **kwargs))


@register_model
def qtvit_4(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-4 (on EfficientViT-L1): 52.96 M params, 84.7% ImageNet top-1 (no released weights)."""
    return _create("qtvit_4", pretrained, **dict(_qt("l1"), **kwargs))


@register_model
def qtvit_5(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-5 (on EfficientViT-L2): 64.11 M params, 85.2% ImageNet top-1."""
    return _create("qtvit_5", pretrained, **dict(_qt("l2"), **kwargs))


@register_model
def qtvit_6(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT-6 (on EfficientViT-L3): 246.84 M params, 86.0% ImageNet top-1."""
    return _create("qtvit_6", pretrained, **dict(_qt("l3"), **kwargs))


@register_model
def efficientvit_nano(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """Tiny B-style EfficientViT for 28-32 px inputs (Fashion-MNIST on a CPU); strides 2, 1, 2, 1, 2."""
    return _create("efficientvit_nano", pretrained, **dict(_ARCHS["nano"], **kwargs))


@register_model
def qtvit_nano(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """efficientvit_nano with the QT-ViT attention (qt kernel, positional embedding on K, v shortcut)."""
    return _create("qtvit_nano", pretrained, **dict(_qt("nano"), **kwargs))


@register_model
def efficientvit_pico(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """Smallest B-style EfficientViT (0.22 M) for 28 px inputs; strides 2, 2, 1, 1, 2, attention on the 7x7 map."""
    return _create("efficientvit_pico", pretrained, **dict(_ARCHS["pico"], **kwargs))


@register_model
def qtvit_pico(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """efficientvit_pico with the QT-ViT attention: the main job's Fashion-MNIST model."""
    return _create("qtvit_pico", pretrained, **dict(_qt("pico"), **kwargs))


@register_model
def qtvit_micro(pretrained: bool = False, **kwargs: Any) -> EfficientViT:
    """QT-ViT for 32 px inputs, twice the widths of qtvit_nano (16-256); strides 2, 1, 2, 1, 2."""
    return _create("qtvit_micro", pretrained, **dict(_qt("micro"), **kwargs))
