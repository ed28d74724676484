"""L2ViT: "The Linear Attention Resurrection in Vision Transformer" (Chuanyang Zheng, arXiv 2501.16182).

Adapted from the official implementation at github.com/ChuanyangZheng/L2ViT (``classification/models/l2vit.py``,
commit fad0341), rewritten with qtvit names. Float64 logits equal the official code's to about 1e-12 for the same
weights (tests/test_l2vit.py); ``L2Vit.checkpoint_filter_fn`` converts the official state_dicts.

Four stages at strides 4, 8, 16, 32. In every stage the blocks alternate: even index = local window attention
(``LWABlock``), odd index = linear global attention + local concentration module (``LGABlock``). Stages work on
channels-last maps (B, H, W, C); everything the model returns is NCHW.

Any input size works: like the official code, the stem zero-pads the image to a multiple of 4, each downsample pads
odd maps by one row/column, and window attention pads maps to a multiple of the window (no masking).

Registered: ``l2vit_tiny``, ``l2vit_small``, ``l2vit_base`` (224 px, window 7), ``l2vit_base_384`` (384 px,
window 12), and ``l2vit_nano`` (ours, no official weights: a 2.35 M-parameter model at 10 classes for 28 x 28
images such as Fashion-MNIST on a CPU; ``num_classes=10, in_chans=1`` for grey images).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..attention import KernelLayer, kernel_factory
from ..constants import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from ..layers.l2vit_blocks import ConvStem, Downsample, LGABlock, LocalConcentration, LWABlock
from ..layers.weight_init import trunc_normal_init_
from ._builder import build_model_with_cfg
from ._features import feature_take_indices
from ._registry import register_model, register_pretrained

__all__ = ["L2Vit", "L2VitStage"]


class L2VitStage(nn.Module):
    """Optional downsample, then ``depth`` blocks alternating LWA (even index) and LGA (odd index)."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            downsample: bool = True,
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            kernel_layer: KernelLayer | None = None,
            lcm_kernel_size: int = 7,
            drop_path: Sequence[float] | float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        dpr = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.downsample = Downsample(in_dim, dim, norm_layer=norm_layer) if downsample else nn.Identity()
        blocks = []
        for j in range(depth):
            common = dict(
                dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[j],
                act_layer=act_layer, norm_layer=norm_layer,
            )
            if j % 2 == 0:
                blocks.append(LWABlock(window_size=window_size, **common))
            else:
                blocks.append(LGABlock(kernel_layer=kernel_layer, lcm_kernel_size=lcm_kernel_size, **common))
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)




# official key -> qtvit key, per block type (the leaf .weight/.bias/... is kept)
_STEM_KEYS = {
    "proj.proj.0": "conv1", "proj.proj.1": "bn1", "proj.proj.3": "conv2", "proj.proj.4": "bn2", "norm": "norm",
}
_DOWNSAMPLE_KEYS = {"norm": "norm", "proj": "conv"}
_COMMON_BLOCK_KEYS = {
    "cpe.0.proj": "cpe1.conv", "norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
    "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_LWA_KEYS = {**_COMMON_BLOCK_KEYS, "cpe.1.proj": "cpe2.conv"}
_LGA_KEYS = {
    **_COMMON_BLOCK_KEYS, "norm3": "norm_lcm",
    "local_mp.conv1": "lcm.conv1", "local_mp.bn": "lcm.bn", "local_mp.conv2": "lcm.conv2",
}


def _map_module(rest: str, table: dict[str, str], full_key: str) -> str:
    module, _, leaf = rest.rpartition(".")
    if module not in table:
        raise ValueError(f"unexpected key {full_key!r} in an official L2ViT state_dict (no mapping for {module!r})")
    return f"{table[module]}.{leaf}"


class L2Vit(nn.Module):
    """L2ViT classifier/backbone with the timm model API.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs; 0 leaves the head as an identity (pre-logits features).
        dims: channels per stage.
        depths: blocks per stage (they alternate LWA, LGA, LWA, ...).
        num_heads: attention heads per stage (the official models use head_dim 32).
        window_size: side of the local attention windows (7 at 224 px, 12 for the 384 px model).
        mlp_ratio: MLP hidden width over dim.
        qkv_bias: bias on the qkv projections.
        kernel: name of the :mod:`qtvit.attention` kernel used by the LGA blocks' global attention. None means
            "l2vit" (the official enhanced linear attention, with the learnable per-head ``temperature`` that
            official checkpoints carry). Another name (e.g. "relu", "qt", "softmax") swaps only the attention
            formula; such a model cannot load the official ``attn.temperature`` weights. A callable
            ``(head_dim, num_heads) -> nn.Module`` is used as the kernel factory itself.
        kernel_options: that kernel's options (a dict), e.g. ``dict(den_min=1.0)`` for "l2vit".
        lcm_kernel_size: depthwise kernel size of the local concentration module.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate, rising linearly from 0 over all blocks (as the official code).
        global_pool: 'avg' (the only pooling L2ViT uses).
        act_layer: activation of MLPs and LCMs (exact GELU).
        norm_layer: token norm (LayerNorm, eps 1e-5).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            dims: Sequence[int] = (96, 192, 384, 768),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            kernel: str | KernelLayer | None = None,
            kernel_options: dict[str, Any] | None = None,
            lcm_kernel_size: int = 7,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if not (len(dims) == len(depths) == len(num_heads)):
            raise ValueError(f"dims {dims}, depths {depths} and num_heads {num_heads} must have the same length")
        if global_pool != "avg":
            raise ValueError(f"global_pool={global_pool!r} is not supported; L2ViT pools with 'avg'")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        if kernel_options is not None and not isinstance(kernel_options, dict):
            raise ValueError(f"kernel_options must be a dict of the kernel's options, got {type(kernel_options)}")
        kernel_layer = kernel_factory(kernel or "l2vit", **(kernel_options or {}))
        self.kernel = self.kernel_name = getattr(kernel_layer, "name", kernel)
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        self.stem = ConvStem(in_chans, dims[0], norm_layer=norm_layer)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: also under meta
        self.stages = nn.ModuleList()
        self.feature_info = []
        cursor = 0
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
            self.stages.append(L2VitStage(
                in_dim=dims[i - 1] if i > 0 else dim,
                dim=dim,
                depth=depth,
                num_heads=heads,
                downsample=i > 0,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                kernel_layer=kernel_layer,
                lcm_kernel_size=lcm_kernel_size,
                drop_path=dpr[cursor:cursor + depth],
                act_layer=act_layer,
                norm_layer=norm_layer,
            ))
            cursor += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(trunc_normal_init_)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter-name regexes grouping stem / blocks, for layer-wise learning-rate decay."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of storing its activations."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one (``num_classes=0``: identity)."""
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"global_pool={global_pool!r} is not supported; L2ViT pools with 'avg'")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_init_(self.head)
            self.head.to(device=self.norm.weight.device, dtype=self.norm.weight.dtype)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"L2Vit expects images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}; "
                f"build the model with in_chans={x.shape[1] if x.ndim == 4 else '...'} for other channel counts"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, stages and the final LayerNorm; returns the stride-32 NCHW map (B, num_features, H/32, W/32)
        (rounded up), before pooling. The official code norms the tokens before pooling, so the norm is here."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Average-pool the NCHW map from ``forward_features``, then the classifier (skipped if ``pre_logits``)."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | Sequence[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (timm semantics).

        Args:
            x: images (B, in_chans, H, W).
            indices: None (all 4 stages), an int n (the last n) or stage indices (negatives count from the end).
            norm: apply the final LayerNorm to the last stage's intermediate.
            stop_early: stop after the deepest requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: return only the list.

        Returns:
            the intermediates (strides 4, 8, 16, 32 for stages 0..3), or ``(final, intermediates)`` where ``final``
            is what ``forward_features`` returns (unnormed if the run stopped before the last stage).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take = feature_take_indices(len(self.stages), indices)
        max_index = max(take)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y if output_fmt == "NHWC" else y.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the deepest of ``indices`` (and optionally the final norm / classifier)."""
        take = feature_take_indices(len(self.stages), indices)
        max_index = max(take)
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    @torch.no_grad()
    def fuse(self, input_size: tuple[int, int] | None = None) -> "L2Vit":
        """Inference form, in place: fold the stem BatchNorms into the stem convs and each LCM BatchNorm into its
        second conv (exactly, see ``FusedLocalConcentration``). Uses the BN running statistics, so the result
        equals this model in eval mode. ``input_size`` is accepted for the zoo's common signature and ignored:
        nothing in L2ViT depends on the input size. Returns self, set to eval mode."""
        self.eval()
        self.stem.fuse()
        for stage in self.stages:
            for block in stage.blocks:
                if isinstance(block, LGABlock) and isinstance(block.lcm, LocalConcentration):
                    block.lcm = block.lcm.fuse()
        return self

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
        """Convert an official L2ViT state_dict (the inner dict of ``{'model': ...}`` / ``{'model_ema': ...}``) to
        qtvit names by an explicit key map; a qtvit-named dict is returned unchanged.

        Official -> qtvit: ``downsample_layers.0.proj.proj.{0,1,3,4}`` -> ``stem.{conv1,bn1,conv2,bn2}``,
        ``downsample_layers.0.norm`` -> ``stem.norm``, ``downsample_layers.i.{norm,proj}`` ->
        ``stages.i.downsample.{norm,conv}``, ``stages.s.j.*`` -> ``stages.s.blocks.j.*`` with ``cpe.0.proj`` ->
        ``cpe1.conv``, ``cpe.1.proj`` -> ``cpe2.conv``, ``norm3`` -> ``norm_lcm``, ``local_mp`` -> ``lcm``,
        ``attn.temperature`` -> ``attn.kernel.temperature``; ``norm`` and ``head`` keep their names.
        """
        if not any(k.startswith("downsample_layers.") for k in state_dict):
            return state_dict
        out = {}
        for key, value in state_dict.items():
            if key.startswith("downsample_layers.0."):
                new = "stem." + _map_module(key[len("downsample_layers.0."):], _STEM_KEYS, key)
            elif m := re.fullmatch(r"downsample_layers\.(\d+)\.(.+)", key):
                new = f"stages.{m[1]}.downsample." + _map_module(m[2], _DOWNSAMPLE_KEYS, key)
            elif m := re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", key):
                prefix = f"stages.{m[1]}.blocks.{m[2]}."
                if int(m[2]) % 2 == 1 and m[3] == "attn.temperature":
                    new = prefix + "attn.kernel.temperature"
                else:
                    new = prefix + _map_module(m[3], _LWA_KEYS if int(m[2]) % 2 == 0 else _LGA_KEYS, key)
            elif re.fullmatch(r"(norm|head)\.(weight|bias)", key):
                new = key
            else:
                raise ValueError(f"unexpected key {key!r} in an official L2ViT state_dict")
            out[new] = value
        return out


def _cfg(url: str | None = None, **kwargs: Any) -> dict[str, Any]:
    # eval protocol of the official main.py/datasets.py: below 384 px, resize the short side to
    # input/0.875 (bicubic) and centre-crop; at 384 px and above, warp (resize, no crop) to the square input
    cfg = dict(
        url=url, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, crop_mode="center",
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="stem.conv1",
        classifier="head", license="mit", paper_ids="arXiv:2501.16182",
        origin_url="https://github.com/ChuanyangZheng/L2ViT",
    )
    cfg.update(kwargs)
    return cfg


_RELEASE = "https://github.com/ChuanyangZheng/L2ViT/releases/download/v1.0/"

default_cfgs: dict[str, dict[str, Any]] = {
    "l2vit_tiny": _cfg(url=_RELEASE + "L2ViT-Tiny-checkpoint-best-ema.pth"),
    "l2vit_small": _cfg(url=_RELEASE + "L2ViT-Small-checkpoint-best-ema.pth"),
    # ImageNet-1k only, 84.4 top-1; the 22k-pretrained 224 px fine-tune (86.0) is
    # L2ViT-Base-22k21k-finetune-224-checkpoint-best.pth in the same release
    "l2vit_base": _cfg(url=_RELEASE + "L2ViT-Base-checkpoint-best-ema.pth"),
    "l2vit_base_384": _cfg(
        url=_RELEASE + "L2ViT-Base-22k21k-finetune-384-checkpoint-best.pth",
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode="squash",
    ),
    "l2vit_nano": _cfg(
        url=None, input_size=(3, 28, 28), pool_size=(1, 1), crop_pct=1.0,
        mean=FASHION_MNIST_MEAN * 3, std=FASHION_MNIST_STD * 3, license="apache-2.0", paper_ids=None, origin_url=None,
    ),
}


register_pretrained(default_cfgs)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> L2Vit:
    cfg = dict(default_cfgs[variant])  # its input size has the model's channels
    cfg["input_size"] = (kwargs.get("in_chans", 3), *cfg["input_size"][1:])
    return build_model_with_cfg(L2Vit, variant, pretrained, pretrained_cfg=cfg, **kwargs)


@register_model
def l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> L2Vit:
    """L2ViT-T: 28.60 M params, 4.7 GMACs at 224, 83.1 % ImageNet-1k top-1."""
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create("l2vit_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_small(pretrained: bool = False, **kwargs: Any) -> L2Vit:
    """L2ViT-S: 50.20 M params, 9.0 GMACs at 224, 84.1 % ImageNet-1k top-1."""
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create("l2vit_small", pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_base(pretrained: bool = False, **kwargs: Any) -> L2Vit:
    """L2ViT-B: 88.58 M params, 15.9 GMACs at 224, 84.4 % ImageNet-1k top-1 (trained with drop_path_rate 0.3)."""
    model_args = dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create("l2vit_base", pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_base_384(pretrained: bool = False, **kwargs: Any) -> L2Vit:
    """L2ViT-B at 384 px with window 12 (ImageNet-22k pretrained, 1k fine-tuned: 87.0 % top-1, 47.5 GMACs)."""
    model_args = dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)
    return _create("l2vit_base_384", pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_nano(pretrained: bool = False, **kwargs: Any) -> L2Vit:
    """Ours, no official counterpart or weights: L2ViT at widths 32-256, one LWA+LGA pair per stage, for quick
    CPU training on 28 x 28 images (Fashion-MNIST; maps 7, 4, 2, 1). Defaults as every model's: 1000 classes,
    3 channels (``num_classes=10, in_chans=1`` for Fashion-MNIST; ``qtvit train`` passes the data's)."""
    model_args = dict(dims=(32, 64, 128, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    return _create("l2vit_nano", pretrained, **dict(model_args, **kwargs))
