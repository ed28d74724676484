"""Semantic segmentation: EfficientViT-Seg (MIT), QT-ViT-Seg (AMD) and UperNet on any backbone of the zoo.

One class, ``SegmentationModel``: a registered backbone (built by name, classifier removed) whose
``forward_intermediates`` feeds a decode head of ``qtvit.layers.seg_heads`` (and, for UperNet, an auxiliary FCN head).

Registered models (``qtvit.create_model(name, ...)``):

- ``efficientvit_seg_{b0,b1,b2,b3,l1,l2}_{cityscapes,ade20k}``: mit-han-lab's EfficientViT-Seg: stages 2, 3, 4
  (strides 8, 16, 32) into ``SegHead`` (SPEC D.10), 19 or 150 classes, logits at stride 8. ``pretrained=True`` loads
  the official weights (Hugging Face ``han-cai/efficientvit-seg``, ``efficientvit_seg_<v>_<dataset>.pt``).
  ``efficientvit_seg_b0_ade20k`` is ours (no official B0 ADE20K model): B0's head without the final expansion.
- ``qtvit_seg_{1..5}_{cityscapes,ade20k}``: the same heads on QT-ViT-1...5 (AMD_QTViT's ``seg.py``); no published
  weights, official-format files load with ``checkpoint_path=``.
- ``upernet_{efficientvit_b0..b3,efficientvit_l1,efficientvit_l2,qtvit_1..5,l2vit_tiny,l2vit_small,l2vit_base}``:
  UperNet (PPM + FPN, 512 channels, pool scales 1, 2, 3, 6, dropout 0.1: mmsegmentation's ADE20K setting, QT-ViT's
  Table 6) on the last four stages (strides 4-32), 150 classes, logits at stride 4, and the auxiliary ``FCNHead``
  (256 channels) on the stride-16 map. No weights; ``pretrained_backbone=True`` starts from ImageNet weights. Other
  backbones: ``SegmentationModel("efficientvit_l3", head_layer=UperHead, in_indices=4, aux_layer=FCNHead)``.

Every registered model takes ``aux_channels=N`` (an auxiliary ``FCNHead`` of width N on the stride-16 map: deep
supervision in training) and ``zero_init_last=True`` (residual branches start at zero).

``model(x)`` returns logits (B, num_classes, ceil(H / s), ceil(W / s)) at the head's stride s (``model.stride``),
in training and eval mode alike; ``model.forward_with_aux(x)`` returns ``(logits, aux_logits)`` (aux at stride 16,
None without an auxiliary head) for UperNet's auxiliary loss (weight 0.4 in mmsegmentation). ``predict_full``
gives full-resolution logits (bilinear upsampling, optional sliding windows and flip averaging).

Any input size works (1024 x 2048, non-square, not a multiple of 32): deeper maps are resized to the shallowest head
input's size, which equals the official factor-based upsampling for multiples of 32. ``kernel=`` swaps the
backbone's attention kernel; ``fuse(input_size)`` / ``inference_form`` fold every BatchNorm; ``export_onnx`` keeps
free height and width. ``SegmentationModel.checkpoint_filter_fn`` maps mit-han-lab's / AMD's ``{"state_dict": ...}``
keys (``backbone.*``, ``head.*``) to these names (``_segmentation_keys``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..layers.conv import ConvNormAct, FusedMBConv, LayerType, MBConv
from ..layers.fold import inference_memory_format
from ..layers.seg_heads import FCNHead, SegHead, UperHead
from ..layers.weight_init import zero_init_last_
from ._builder import build_model_with_cfg
from ._features import feature_take_indices
from ._registry import model_entrypoint, register_model, register_pretrained
from ._segmentation_keys import checkpoint_filter_fn
from .seg_inference import predict_full
from .efficientvit import EfficientViT

__all__ = ["SegmentationModel", "checkpoint_filter_fn", "predict_full"]


class SegmentationModel(nn.Module):
    """A backbone of the zoo + a decode head (+ an auxiliary head for training).

    Args:
        backbone: a registered model name with ``feature_info`` and ``forward_intermediates`` (e.g. "qtvit_1").
        head_layer: the decode head type, called ``head_layer(in_chs, num_classes, **head_args)``.
        head_args: the head's other arguments (width, depth, norm and activation types...).
        in_indices: the backbone stages fed to the head (a sequence, or an int n for the last n stages).
        num_classes: classes (0: the heads return features).
        aux_layer: an auxiliary head type (``FCNHead`` for UperNet), called ``aux_layer(chs, num_classes,
            **aux_args)`` on the ``aux_in_index``-th head input; None: no auxiliary head.
        aux_args, aux_in_index: its arguments, and which head input it reads (-2: the second deepest).
        in_chans, kernel, kernel_options, drop_path_rate, backbone_args: backbone arguments (kernel if given).
        pretrained_backbone: load the backbone's official (ImageNet) weights before removing its classifier.
        zero_init_last: start every residual branch of the backbone and the heads at zero (``zero_init_last_``).
    """

    new_parameter_patterns = EfficientViT.new_parameter_patterns  # an EfficientViT-Seg file into QT-ViT-Seg

    def __init__(
        self,
        backbone: str,
        head_layer: LayerType = SegHead,
        head_args: Optional[dict[str, Any]] = None,
        in_indices: Union[int, Sequence[int]] = (2, 3, 4),
        num_classes: int = 150,
        aux_layer: Optional[LayerType] = None,
        aux_args: Optional[dict[str, Any]] = None,
        aux_in_index: int = -2,
        in_chans: int = 3,
        kernel: Union[str, Any, None] = None,
        kernel_options: Optional[dict[str, Any]] = None,
        drop_path_rate: float = 0.0,
        backbone_args: Optional[dict[str, Any]] = None,
        pretrained_backbone: bool = False,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        args = dict(backbone_args or {}, in_chans=in_chans, drop_path_rate=drop_path_rate)
        args.update({k: v for k, v in dict(kernel=kernel, kernel_options=kernel_options).items() if v is not None})
        self.backbone = model_entrypoint(backbone)(pretrained=pretrained_backbone, **args)
        if not getattr(self.backbone, "feature_info", None) or not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(f"backbone {backbone!r} gives no features (feature_info, forward_intermediates)")
        self.in_indices = tuple(feature_take_indices(len(self.backbone.feature_info), in_indices, backbone))
        self.backbone.prune_intermediate_layers(list(self.in_indices), prune_norm=True, prune_head=True)
        self.feature_info = list(self.backbone.feature_info)
        self.backbone_name = backbone
        self.kernel_name = getattr(self.backbone, "kernel_name", None)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stride = self.feature_info[self.in_indices[0]]["reduction"]
        chs = [self.feature_info[i]["num_chs"] for i in self.in_indices]
        self.head = head_layer(chs, num_classes, **(head_args or {}))
        self.aux_in_index = aux_in_index
        self.aux_head = aux_layer(chs[aux_in_index], num_classes, **(aux_args or {})) if aux_layer else None
        if zero_init_last:  # a pretrained backbone keeps its weights
            for part in (self.head, self.aux_head) if pretrained_backbone else (self,):
                if part is not None:
                    zero_init_last_(part)

    # --- timm-style API --------------------------------------------------------------------------------------------
    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> dict:
        """Official EfficientViT-Seg / QT-ViT-Seg state_dict -> qtvit names (``_segmentation_keys``)."""
        return checkpoint_filter_fn(state_dict, model)

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifiers (decode and auxiliary heads) for ``num_classes`` (``global_pool``: timm's, unused)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)
        if self.aux_head is not None:
            self.aux_head.reset(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone maps the heads read (``in_indices``), shallow to deep."""
        return self.backbone.forward_intermediates(x, list(self.in_indices), stop_early=True, intermediates_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, ceil(H / stride), ceil(W / stride))."""
        return self.head(self.forward_features(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(logits, aux_logits)``: the decode head's and the auxiliary head's (None without one)."""
        features = self.forward_features(x)
        aux = self.aux_head(features[self.aux_in_index]) if self.aux_head is not None else None
        return self.head(features), aux

    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None] = None,
                              **kwargs: Any) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """The backbone's stage maps (timm semantics; ``features_only=True`` uses it)."""
        return self.backbone.forward_intermediates(x, indices=indices, **kwargs)

    # --- inference form --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, input_size: Optional[tuple[int, int]] = None) -> "SegmentationModel":
        """In place, on an eval-mode model: the backbone's inference form and the head BatchNorms folded."""
        self.backbone.fuse(input_size)
        for m in list(self.modules()):
            if isinstance(m, ConvNormAct):
                m.fuse()
        return inference_memory_format(self)


# --------------------------------------------------------------------------------------------------------------------
# Configurations and registered constructors
# --------------------------------------------------------------------------------------------------------------------
_HF = "https://huggingface.co/han-cai/efficientvit-seg/resolve/main/"
_CLASSES = {"cityscapes": 19, "ade20k": 150}
_INPUT = {"cityscapes": (3, 1024, 2048), "ade20k": (3, 512, 512)}
_GELU_TANH = partial(nn.GELU, approximate="tanh")
# SPEC D.10: (head width, depth, expand ratio, middle block, final expand) per backbone and dataset.
_HEADS: dict[tuple[str, str], tuple[int, int, float, type, Optional[int]]] = {
    ("b0", "cityscapes"): (32, 1, 4, MBConv, 4), ("b0", "ade20k"): (32, 1, 4, MBConv, None),  # B0 ADE20K: ours
    ("b1", "cityscapes"): (64, 3, 4, MBConv, 4), ("b1", "ade20k"): (64, 3, 4, MBConv, None),
    ("b2", "cityscapes"): (96, 3, 4, MBConv, 4), ("b2", "ade20k"): (96, 3, 4, MBConv, None),
    ("b3", "cityscapes"): (128, 3, 4, MBConv, 4), ("b3", "ade20k"): (128, 3, 4, MBConv, None),
    ("l1", "cityscapes"): (256, 3, 1, FusedMBConv, None), ("l1", "ade20k"): (128, 3, 4, FusedMBConv, 8),
    ("l2", "cityscapes"): (256, 5, 1, FusedMBConv, None), ("l2", "ade20k"): (128, 3, 4, FusedMBConv, 8),
}


def _cfg(url: Optional[str] = None, dataset: str = "ade20k", first_conv: str = "backbone.stem.conv",
         **kwargs: Any) -> dict[str, Any]:
    cfg = dict(
        url=url, num_classes=_CLASSES[dataset], input_size=_INPUT[dataset], interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv=first_conv, classifier="head.classifier",
        license="apache-2.0", paper_ids="arXiv:2205.14756", origin_url="https://github.com/mit-han-lab/efficientvit",
        task="segmentation",  # what the model is for: validate and predict take it from here (train/evaluate.py)
    )
    cfg.update(kwargs)
    cfg["origin_url"] = cfg["origin_url"] if url else None  # without weights, no "published at <origin>"
    return cfg


def _seg_head_args(arch: str, dataset: str) -> dict[str, Any]:
    width, depth, expand, block, final = _HEADS[(arch, dataset)]
    large = arch.startswith("l")
    head = dict(width=width, depth=depth, expand_ratio=expand, block=block, final_expand=final,
                norm_layer=partial(nn.BatchNorm2d, eps=1e-7 if large else 1e-5),
                act_layer=_GELU_TANH if large else nn.Hardswish)
    return dict(head_layer=SegHead, head_args=head, in_indices=(2, 3, 4), num_classes=_CLASSES[dataset])


def _create(variant: str, pretrained: bool, cfg: dict, defaults: dict, aux_channels: int = 0,
            **kwargs: Any) -> SegmentationModel:
    # aux_channels > 0 adds an auxiliary FCNHead of that width on the second deepest head input (deep supervision
    # of the stride-16 features in training, as UperNet's; the official EfficientViT-Seg models have none)
    if isinstance(aux_channels, bool) or not isinstance(aux_channels, int) or aux_channels < 0:
        raise ValueError(f"aux_channels={aux_channels!r}: give the auxiliary head's width, a whole number of channels "
                         "(0: no auxiliary head)")
    unset = [k for k, v in kwargs.items() if v is None and defaults.get(k) is not None]
    if unset:
        kind = type(defaults[unset[0]]).__name__
        raise ValueError(f"{unset[0]}=None would remove {variant}'s {unset[0]} (a {kind}); leave {unset[0]} out to "
                         f"keep the default, or give a {kind}")
    if aux_channels:
        defaults = dict(defaults, aux_layer=FCNHead, aux_args=dict(channels=int(aux_channels), num_convs=1,
                                                                  drop_rate=0.1))
    return build_model_with_cfg(SegmentationModel, variant, pretrained, pretrained_cfg=cfg, **dict(defaults, **kwargs))


def _efficientvit_seg_cfg(arch: str, dataset: str) -> dict[str, Any]:
    return _cfg(None if (arch, dataset) == ("b0", "ade20k") else f"{_HF}efficientvit_seg_{arch}_{dataset}.pt", dataset)


register_pretrained({f"efficientvit_seg_{a}_{d}": _efficientvit_seg_cfg(a, d) for a, d in _HEADS})


def _efficientvit_seg(arch: str, dataset: str, pretrained: bool, **kwargs: Any) -> SegmentationModel:
    variant = f"efficientvit_seg_{arch}_{dataset}"
    cfg = _efficientvit_seg_cfg(arch, dataset)
    return _create(variant, pretrained, cfg, dict(_seg_head_args(arch, dataset), backbone=f"efficientvit_{arch}"),
                   **kwargs)


def _qtvit_seg(i: int, dataset: str, pretrained: bool, **kwargs: Any) -> SegmentationModel:
    cfg = _cfg(None, dataset, paper_ids="openreview:V2e0A2XIPF")
    head = _seg_head_args(("b1", "b2", "b3", "l1", "l2")[i - 1], dataset)
    return _create(f"qtvit_seg_{i}_{dataset}", pretrained, cfg, dict(head, backbone=f"qtvit_{i}"), **kwargs)


def _upernet(backbone: str, pretrained: bool, **kwargs: Any) -> SegmentationModel:
    stem = "backbone.stem.conv1" if backbone.startswith("l2vit") else "backbone.stem.conv"
    cfg = _cfg(None, "ade20k", stem, classifier=["head.classifier", "aux_head.classifier"], license=None,
               paper_ids="arXiv:1807.10221")
    defaults = dict(backbone=backbone, head_layer=UperHead, head_args=dict(channels=512, pool_scales=(1, 2, 3, 6),
                    drop_rate=0.1), in_indices=4, num_classes=150, aux_layer=FCNHead,
                    aux_args=dict(channels=256, num_convs=1, drop_rate=0.1), aux_in_index=-2)
    return _create(f"upernet_{backbone}", pretrained, cfg, defaults, **kwargs)


@register_model
def efficientvit_seg_b0_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B0, Cityscapes (19 classes): 0.71 M params, 75.7 mIoU at 1024x2048."""
    return _efficientvit_seg("b0", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_b0_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B0 with an ADE20K head (150 classes); ours, no official model or weights."""
    return _efficientvit_seg("b0", "ade20k", pretrained, **kwargs)


@register_model
def efficientvit_seg_b1_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B1, Cityscapes: 4.80 M params, 80.5 mIoU."""
    return _efficientvit_seg("b1", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_b1_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B1, ADE20K: 4.79 M params, 42.8 mIoU at 512 px."""
    return _efficientvit_seg("b1", "ade20k", pretrained, **kwargs)


@register_model
def efficientvit_seg_b2_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B2, Cityscapes: 15.32 M params, 82.1 mIoU."""
    return _efficientvit_seg("b2", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_b2_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B2, ADE20K: 15.29 M params, 45.9 mIoU."""
    return _efficientvit_seg("b2", "ade20k", pretrained, **kwargs)


@register_model
def efficientvit_seg_b3_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B3, Cityscapes: 39.60 M params, 83.0 mIoU."""
    return _efficientvit_seg("b3", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_b3_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-B3, ADE20K: 39.55 M params, 49.0 mIoU."""
    return _efficientvit_seg("b3", "ade20k", pretrained, **kwargs)


@register_model
def efficientvit_seg_l1_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-L1, Cityscapes: 40.24 M params, 82.7 mIoU."""
    return _efficientvit_seg("l1", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_l1_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-L1, ADE20K: 40.41 M params, 49.2 mIoU."""
    return _efficientvit_seg("l1", "ade20k", pretrained, **kwargs)


@register_model
def efficientvit_seg_l2_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-L2, Cityscapes: 52.61 M params, 83.2 mIoU."""
    return _efficientvit_seg("l2", "cityscapes", pretrained, **kwargs)


@register_model
def efficientvit_seg_l2_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """EfficientViT-Seg-L2, ADE20K: 51.46 M params, 50.7 mIoU."""
    return _efficientvit_seg("l2", "ade20k", pretrained, **kwargs)


@register_model
def qtvit_seg_1_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-1 + the B1 Cityscapes SegHead."""
    return _qtvit_seg(1, "cityscapes", pretrained, **kwargs)


@register_model
def qtvit_seg_1_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-1 + the B1 ADE20K SegHead: 5.04 M params."""
    return _qtvit_seg(1, "ade20k", pretrained, **kwargs)


@register_model
def qtvit_seg_2_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-2 + the B2 Cityscapes SegHead."""
    return _qtvit_seg(2, "cityscapes", pretrained, **kwargs)


@register_model
def qtvit_seg_2_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-2 + the B2 ADE20K SegHead."""
    return _qtvit_seg(2, "ade20k", pretrained, **kwargs)


@register_model
def qtvit_seg_3_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-3 + the B3 Cityscapes SegHead."""
    return _qtvit_seg(3, "cityscapes", pretrained, **kwargs)


@register_model
def qtvit_seg_3_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-3 + the B3 ADE20K SegHead."""
    return _qtvit_seg(3, "ade20k", pretrained, **kwargs)


@register_model
def qtvit_seg_4_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-4 + the L1 Cityscapes SegHead."""
    return _qtvit_seg(4, "cityscapes", pretrained, **kwargs)


@register_model
def qtvit_seg_4_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-4 + the L1 ADE20K SegHead."""
    return _qtvit_seg(4, "ade20k", pretrained, **kwargs)


@register_model
def qtvit_seg_5_cityscapes(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-5 + the L2 Cityscapes SegHead."""
    return _qtvit_seg(5, "cityscapes", pretrained, **kwargs)


@register_model
def qtvit_seg_5_ade20k(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """QT-ViT-5 + the L2 ADE20K SegHead."""
    return _qtvit_seg(5, "ade20k", pretrained, **kwargs)


@register_model
def upernet_efficientvit_b0(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-B0, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_b0", pretrained, **kwargs)


@register_model
def upernet_efficientvit_b1(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-B1 (QT-ViT paper Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_b1", pretrained, **kwargs)


@register_model
def upernet_efficientvit_b2(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-B2 (Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_b2", pretrained, **kwargs)


@register_model
def upernet_efficientvit_b3(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-B3 (Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_b3", pretrained, **kwargs)


@register_model
def upernet_efficientvit_l1(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-L1, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_l1", pretrained, **kwargs)


@register_model
def upernet_efficientvit_l2(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on EfficientViT-L2, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("efficientvit_l2", pretrained, **kwargs)


@register_model
def upernet_qtvit_1(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on QT-ViT-1 (Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("qtvit_1", pretrained, **kwargs)


@register_model
def upernet_qtvit_2(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on QT-ViT-2 (Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("qtvit_2", pretrained, **kwargs)


@register_model
def upernet_qtvit_3(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on QT-ViT-3 (Table 6), ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("qtvit_3", pretrained, **kwargs)


@register_model
def upernet_qtvit_4(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on QT-ViT-4, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("qtvit_4", pretrained, **kwargs)


@register_model
def upernet_qtvit_5(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on QT-ViT-5, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("qtvit_5", pretrained, **kwargs)


@register_model
def upernet_l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on L2ViT-T, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("l2vit_tiny", pretrained, **kwargs)


@register_model
def upernet_l2vit_small(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on L2ViT-S, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("l2vit_small", pretrained, **kwargs)


@register_model
def upernet_l2vit_base(pretrained: bool = False, **kwargs: Any) -> SegmentationModel:
    """UperNet on L2ViT-B, ADE20K (150 classes), with the auxiliary FCN head."""
    return _upernet("l2vit_base", pretrained, **kwargs)
