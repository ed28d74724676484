"""Object detection and instance segmentation: torchvision's Mask R-CNN and RetinaNet on any backbone of the zoo.

Nothing of the detectors is ours but the glue: a registered backbone's stage maps (``forward_intermediates``, as
``features_only`` gives them) feed torchvision's ``FeaturePyramidNetwork``, and that ``BackboneFPN`` is the
``backbone`` of torchvision's ``MaskRCNN`` / ``RetinaNet`` (their RPN, anchors, RoIAlign heads, losses, NMS and
resizing transform unchanged). torchvision is the ``detect`` extra: this module imports it only when a detector is
built, so the rest of the zoo works without it.

Registered models (``qtvit.create_model(name, ...)``), for X in efficientvit_b1..b3, qtvit_1..3, l2vit_tiny:

- ``maskrcnn_X``: Mask R-CNN (the QT-ViT paper's Table 4): FPN of 256 channels on the stride 4-32 stages plus a
  max-pooled P6, anchors 32-512 (one size per level, ratios 0.5, 1, 2), torchvision's box head (two 1024-d fc) and
  mask head (four 3x3 convs of 256, 28x28 masks): mmdetection's ``mask_rcnn_r50_fpn`` neck and heads.
- ``retinanet_X``: RetinaNet: FPN of 256 channels on the stride 8-32 stages plus P6, P7 from P5, torchvision's
  default anchors (3 scales x 3 ratios per level) and heads.

``num_classes`` counts the background (torchvision's convention, labels 1..K): 81 for COCO's 80 categories mapped
to contiguous ids (``qtvit.data.coco``). ``model(images)`` takes a list of float (3, H, W) images in 0..1 of any size
(non-square, not a multiple of 32): the detector's transform resizes the shorter side to ``min_size`` (at most
``max_size`` on the longer), normalises with ImageNet's mean and std and pads to a multiple of 32; detections come
back in the input images' coordinates. Training mode takes ``(images, targets)`` and returns torchvision's loss
dict; eval mode returns one dict per image (``boxes`` xyxy, ``labels``, ``scores``, and ``masks`` (N, 1, H, W)
probabilities for Mask R-CNN).

Backbone options pass through: ``kernel=``/``kernel_options=`` swap the attention kernel, ``pos_embed=False``
removes QT-ViT's positional embedding (Table 5's no-APE row), ``drop_path_rate``, ``backbone_args={...}`` any
other constructor argument; ``pretrained_backbone=True`` loads the backbone's ImageNet weights (as UperNet's) before
its classifier is removed. Other detector options (``min_size``, ``max_size``, ``anchor_sizes``, ``fpn_channels``,
Mask R-CNN's ``box_head_dim``, ``mask_head_channels`` and ``mask_head_layers``, ``head_norm`` (None, "gn" or "bn":
the FPN's and the mask head's normalisation), ``mask_paste`` ("exact", the default: each pixel reads the 28 x 28
mask where its training target was sampled, ``qtvit.models._mask_paste``; "torchvision": its integer box one pixel
larger), ``roi_sampling_ratio`` (RoIAlign's samples per bin side, torchvision's 2 by default), and any keyword of
torchvision's ``MaskRCNN`` / ``RetinaNet`` such as ``box_detections_per_img`` or ``box_batch_size_per_image``) are
arguments too;
``build_detector("maskrcnn", "qtvit_nano", backbone_args=dict(strides=(2,) * 5))`` puts one on any backbone.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ._builder import build_model_with_cfg
from ._features import feature_take_indices
from ._registry import model_entrypoint, register_model

__all__ = ["BackboneFPN", "build_detector", "DETECTOR_KINDS", "DETECTION_BACKBONES"]

DETECTOR_KINDS = ("maskrcnn", "retinanet")
MASK_PASTES = ("exact", "torchvision")
DETECTION_BACKBONES = ("efficientvit_b1", "efficientvit_b2", "efficientvit_b3", "qtvit_1", "qtvit_2", "qtvit_3",
                       "l2vit_tiny")


def _torchvision():
    try:
        import torchvision
        import torchvision.models.detection  # noqa: F401
    except ImportError as e:  # the detectors are the `detect` extra; the rest of the zoo does not need it
        raise ImportError("the detectors need torchvision: pip install 'qtvit[detect]' (with the constraints file, "
                          "so that torch and torchvision match)") from e
    return torchvision


class BackboneFPN(nn.Module):
    """A zoo backbone's stage maps into torchvision's ``FeaturePyramidNetwork``: the ``backbone`` torchvision's
    detectors expect (``forward(x)`` -> an OrderedDict of maps, all ``out_channels`` wide, fine to coarse).

    Args:
        backbone: a registered model name with ``feature_info`` and ``forward_intermediates`` (e.g. "qtvit_1").
        in_indices: the stages fed to the FPN (a sequence, or an int n for the last n stages).
        out_channels: the FPN's width.
        extra: "pool" (a max-pooled level after the last, Mask R-CNN's P6) or "p6p7" (two strided 3x3 convs from
            the last FPN level, RetinaNet's P6 and P7).
        pretrained_backbone: load the backbone's official (ImageNet) weights before removing its classifier.
        backbone_args: the backbone constructor's arguments.
        norm: the FPN's normalisation: None (torchvision's and mmdetection's default), "gn" (GroupNorm, 32 groups:
            what detectors trained from scratch use) or "bn".
    """

    def __init__(self, backbone: str, in_indices: Union[int, Sequence[int]] = 4, out_channels: int = 256,
                 extra: str = "pool", pretrained_backbone: bool = False,
                 backbone_args: Optional[dict[str, Any]] = None, norm: Optional[str] = None) -> None:
        super().__init__()
        ops = _torchvision().ops.feature_pyramid_network
        if extra not in ("pool", "p6p7"):
            raise ValueError(f"extra={extra!r}: use 'pool' (Mask R-CNN's P6) or 'p6p7' (RetinaNet's P6, P7)")
        self.body = model_entrypoint(backbone)(pretrained=pretrained_backbone, **(backbone_args or {}))
        if not getattr(self.body, "feature_info", None) or not hasattr(self.body, "forward_intermediates"):
            raise ValueError(f"backbone {backbone!r} gives no features (feature_info, forward_intermediates)")
        self.in_indices = tuple(feature_take_indices(len(self.body.feature_info), in_indices, backbone))
        self.body.prune_intermediate_layers(list(self.in_indices), prune_norm=True, prune_head=True)
        info = [self.body.feature_info[i] for i in self.in_indices]
        self.backbone_name = backbone
        self.kernel_name = getattr(self.body, "kernel_name", None)
        self.strides = [f["reduction"] for f in info]
        self.out_channels = out_channels
        extra_blocks = ops.LastLevelMaxPool() if extra == "pool" else ops.LastLevelP6P7(out_channels, out_channels)
        self.fpn = ops.FeaturePyramidNetwork([f["num_chs"] for f in info], out_channels, extra_blocks=extra_blocks,
                                             norm_layer=norm_layer(norm))

    def fuse(self, input_size: Optional[tuple[int, int]] = None) -> "BackboneFPN":
        """In place: the backbone's inference form (``fuse``: BatchNorms folded; positional embeddings cached when
        ``input_size``, the padded batch the detector feeds it, is given). torchvision's FPN has no BatchNorm."""
        self.body.fuse(input_size)
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body.forward_intermediates(x, list(self.in_indices), stop_early=True, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


NORMS = (None, "gn", "bn")


def norm_layer(norm: Optional[str]):
    """The normalisation a neck or head option names: None, "gn" (GroupNorm of 32 groups, or one group per channel
    under 32 channels) or "bn" (BatchNorm2d)."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: use one of {NORMS}")
    if norm == "gn":
        return lambda channels: nn.GroupNorm(min(32, channels), channels)
    return nn.BatchNorm2d if norm == "bn" else None


def _backbone_args(kernel, kernel_options, pos_embed, drop_path_rate, in_chans, backbone_args) -> dict[str, Any]:
    given = dict(kernel=kernel, kernel_options=kernel_options, pos_embed=pos_embed, in_chans=in_chans)
    args = dict(backbone_args or {}, drop_path_rate=drop_path_rate)
    args.update({k: v for k, v in given.items() if v is not None})
    return args


def build_detector(
    kind: str,
    backbone: str,
    num_classes: int = 81,
    *,
    min_size: Union[int, tuple[int, ...]] = 800,
    max_size: int = 1333,
    anchor_sizes: Optional[Sequence[int]] = None,
    fpn_channels: int = 256,
    box_head_dim: int = 1024,
    mask_head_channels: int = 256,
    mask_head_layers: int = 4,
    head_norm: Optional[str] = None,
    mask_paste: str = "exact",
    roi_sampling_ratio: int = 2,
    in_indices: Union[int, Sequence[int], None] = None,
    pretrained_backbone: bool = False,
    kernel: Union[str, Any, None] = None,
    kernel_options: Optional[dict[str, Any]] = None,
    pos_embed: Optional[bool] = None,
    drop_path_rate: float = 0.0,
    in_chans: Optional[int] = None,
    backbone_args: Optional[dict[str, Any]] = None,
    **detector_args: Any,
) -> nn.Module:
    """torchvision's ``MaskRCNN`` (kind "maskrcnn") or ``RetinaNet`` ("retinanet") on a ``BackboneFPN`` of
    ``backbone``; see the module docstring for the arguments. ``anchor_sizes``: one base size per pyramid level
    (default 32, 64, 128, 256, 512; RetinaNet adds the 2^(1/3) and 2^(2/3) scales of each)."""
    tv = _torchvision()
    det = tv.models.detection
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"detector kind {kind!r}: use one of {DETECTOR_KINDS}")
    if mask_paste not in MASK_PASTES:
        raise ValueError(f"mask_paste={mask_paste!r}: use one of {MASK_PASTES}")
    args = _backbone_args(kernel, kernel_options, pos_embed, drop_path_rate, in_chans, backbone_args)
    maskrcnn = kind == "maskrcnn"
    # Mask R-CNN reads P2-P5 (+ pooled P6), RetinaNet P3-P5 (+ P6, P7): the last 4 / 3 stages of the B-series
    # and L2ViT backbones (strides 4-32 / 8-32).
    body = BackboneFPN(backbone, in_indices if in_indices is not None else (4 if maskrcnn else 3), fpn_channels,
                       "pool" if maskrcnn else "p6p7", pretrained_backbone, args, head_norm)
    levels = len(body.in_indices) + (1 if maskrcnn else 2)
    sizes = tuple(anchor_sizes) if anchor_sizes is not None else tuple(32 * 2 ** i for i in range(levels))
    if len(sizes) != levels:
        raise ValueError(f"anchor_sizes {sizes}: the FPN has {levels} levels, give one base size per level")
    ratios = ((0.5, 1.0, 2.0),) * levels
    chans = args.get("in_chans", 3)
    # ImageNet's statistics for RGB (the backbones' pretraining); other channel counts have none to reuse
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,) * chans, (0.25,) * chans)
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(mean), image_std=list(std))
    if maskrcnn:
        anchors = det.anchor_utils.AnchorGenerator(tuple((s,) for s in sizes), ratios)
        heads = _roi_heads(fpn_channels, num_classes, box_head_dim, mask_head_channels, mask_head_layers,
                           head_norm, roi_sampling_ratio)
        model = det.MaskRCNN(body, None, rpn_anchor_generator=anchors, **heads, **common, **detector_args)
        if mask_paste == "exact":
            from ._mask_paste import ExactPasteTransform  # imports torchvision
            model.transform = ExactPasteTransform.like(model.transform)
    else:
        scaled = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
        model = det.RetinaNet(body, num_classes, anchor_generator=det.anchor_utils.AnchorGenerator(scaled, ratios),
                              **common, **detector_args)
    model.num_classes = num_classes
    model.backbone_name = backbone
    model.kernel_name = body.kernel_name
    return model


def _roi_heads(channels: int, num_classes: int, box_dim: int, mask_channels: int, mask_layers: int,
               norm: Optional[str] = None, sampling_ratio: int = 2) -> dict:
    """Mask R-CNN's box and mask heads at the given widths, and their RoIAligns (torchvision's own classes and
    parameter names; the defaults are its defaults: two 1024-d fc layers, four 3x3 convs of 256, RoIAlign of 7 and
    14 bins from P2-P5 with `sampling_ratio` 2, i.e. 2 x 2 samples per bin)."""
    tv = _torchvision()
    det = tv.models.detection
    if sampling_ratio < 0:
        raise ValueError(f"roi_sampling_ratio={sampling_ratio}: give samples per bin side (0: adaptive, "
                         "ceil(RoI size / bins))")
    levels = ["0", "1", "2", "3"]  # BackboneFPN's P2-P5; the pooled P6 serves the RPN only, as in torchvision
    for name, v in (("box_head_dim", box_dim), ("mask_head_channels", mask_channels), ("mask_head_layers", mask_layers)):
        if v < 1:
            raise ValueError(f"{name}={v}: give a positive width or count")
    pool = 7  # the box branch's RoIAlign output side (torchvision's MultiScaleRoIAlign default)
    return dict(box_roi_pool=tv.ops.MultiScaleRoIAlign(levels, pool, sampling_ratio),
                mask_roi_pool=tv.ops.MultiScaleRoIAlign(levels, 14, sampling_ratio),
                box_head=det.faster_rcnn.TwoMLPHead(channels * pool * pool, box_dim),
                box_predictor=det.faster_rcnn.FastRCNNPredictor(box_dim, num_classes),
                mask_head=det.mask_rcnn.MaskRCNNHeads(channels, [mask_channels] * mask_layers, 1,
                                                           norm_layer(norm)),
                mask_predictor=det.mask_rcnn.MaskRCNNPredictor(mask_channels, mask_channels, num_classes))


def _cfg(kind: str, backbone: str) -> dict[str, Any]:
    stem = "backbone.body.stem.conv1" if backbone.startswith("l2vit") else "backbone.body.stem.conv"
    # RetinaNet's classifier is a conv of (anchors x classes) outputs, which would read as that many classes when
    # a checkpoint's config is written from the weights: its num_classes is saved from the constructor's arguments
    classifier = (["roi_heads.box_predictor.cls_score", "roi_heads.mask_predictor.mask_fcn_logits"]
                  if kind == "maskrcnn" else None)
    return dict(url=None, num_classes=81, input_size=(3, 800, 1333), interpolation="bilinear", mean=IMAGENET_MEAN,
                std=IMAGENET_STD, first_conv=stem, classifier=classifier, license=None, origin_url=None,
                paper_ids="arXiv:1703.06870" if kind == "maskrcnn" else "arXiv:1708.02002", task="detection")


def _create(kind: str, backbone: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    return build_model_with_cfg(build_detector, f"{kind}_{backbone}", pretrained, pretrained_cfg=_cfg(kind, backbone),
                                kind=kind, backbone=backbone, **kwargs)


@register_model
def maskrcnn_efficientvit_b1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on EfficientViT-B1 (QT-ViT paper Table 4: 39.1 box AP on COCO, 57.6 M params)."""
    return _create("maskrcnn", "efficientvit_b1", pretrained, **kwargs)


@register_model
def maskrcnn_efficientvit_b2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on EfficientViT-B2 (Table 4: 40.8 box AP, 68.0 M params)."""
    return _create("maskrcnn", "efficientvit_b2", pretrained, **kwargs)


@register_model
def maskrcnn_efficientvit_b3(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on EfficientViT-B3 (Table 4: 42.3 box AP, 92.1 M params)."""
    return _create("maskrcnn", "efficientvit_b3", pretrained, **kwargs)


@register_model
def maskrcnn_qtvit_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on QT-ViT-1 (Table 4: 39.3 box AP, 57.9 M params)."""
    return _create("maskrcnn", "qtvit_1", pretrained, **kwargs)


@register_model
def maskrcnn_qtvit_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on QT-ViT-2 (Table 4: 41.1 box AP, 68.5 M params)."""
    return _create("maskrcnn", "qtvit_2", pretrained, **kwargs)


@register_model
def maskrcnn_qtvit_3(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on QT-ViT-3 (Table 4: 42.6 box AP, 93.1 M params)."""
    return _create("maskrcnn", "qtvit_3", pretrained, **kwargs)


@register_model
def maskrcnn_l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mask R-CNN (FPN 256) on L2ViT-T."""
    return _create("maskrcnn", "l2vit_tiny", pretrained, **kwargs)


@register_model
def retinanet_efficientvit_b1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on EfficientViT-B1."""
    return _create("retinanet", "efficientvit_b1", pretrained, **kwargs)


@register_model
def retinanet_efficientvit_b2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on EfficientViT-B2."""
    return _create("retinanet", "efficientvit_b2", pretrained, **kwargs)


@register_model
def retinanet_efficientvit_b3(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on EfficientViT-B3."""
    return _create("retinanet", "efficientvit_b3", pretrained, **kwargs)


@register_model
def retinanet_qtvit_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on QT-ViT-1."""
    return _create("retinanet", "qtvit_1", pretrained, **kwargs)


@register_model
def retinanet_qtvit_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on QT-ViT-2."""
    return _create("retinanet", "qtvit_2", pretrained, **kwargs)


@register_model
def retinanet_qtvit_3(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on QT-ViT-3."""
    return _create("retinanet", "qtvit_3", pretrained, **kwargs)


@register_model
def retinanet_l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet (FPN 256, P3-P7) on L2ViT-T (L2ViT's RetinaNet setting)."""
    return _create("retinanet", "l2vit_tiny", pretrained, **kwargs)
