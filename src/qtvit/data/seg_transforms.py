"""Segmentation transforms: joint image + mask training augmentation, the official evaluation protocol, and the
batched photometric augmentation and normalisation on the device.

Training (``SegTrainTransform``, per sample in the loader workers, mmseg's ADE20K / Cityscapes pipeline):

1. random scale: a ratio r ~ U(ratio_range); with a ``base_scale`` (long, short) the image is rescaled by
   ``r * min(long / long side, short / short side)`` (mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``),
   else by r; the image bilinearly, the mask nearest-neighbour (kornia's ``resize``);
2. random crop of ``crop_size`` (a smaller image keeps all of its side), re-drawn up to 10 times while one class
   covers more than ``cat_max_ratio`` of the crop's labelled pixels (mmseg's ``RandomCrop(cat_max_ratio=0.75)``);
3. horizontal flip of both with probability ``hflip`` (kornia's ``hflip``);
4. padding to ``crop_size`` at the bottom and right: image 0, mask 255 (ignore), as mmseg's data preprocessor.

Every draw comes from a generator seeded by (seed, epoch, sample index), so a run is reproducible and independent
of the number of workers. The photometric jitter (brightness, contrast, saturation, hue; kornia ``ColorJitter``)
touches the images only and runs batched on the device in ``SegBatchAugment``, from the global torch RNG (saved in
the training state), like the classification augmentations.

Evaluation (``SegEvalTransform``) follows EfficientViT's ``eval_efficientvit_seg_model.py``: the image is resized
with a bicubic kernel (cv2 ``INTER_CUBIC``: Keys a = -0.75, half-pixel centres, no antialiasing; here kornia's
``resize``, which is torch's ``interpolate``), rounded to uint8, and the mask is kept at its original size with the
labels mapped; the model's logits are resized to the mask's size before the metric (``seg_metrics``). Sizes:

* ``short_side=S`` (ADE20K: 512): the short side becomes S and the long side ``ceil(long / short * S / 32) * 32``;
* ``size=(H, W)`` (Cityscapes: (1024, 2048), its full resolution): the image is resized to exactly H x W.

Neither pads nor crops. Evaluation images of different sizes cannot share a batch: evaluate with batch size 1,
as the official script does for ADE20K.

The multi-scale test (``scales``, mmsegmentation's ``img_ratios``) gives one view per ratio r, each resized from
the original image to the protocol's size at r: ``short_side * r`` (the long side rounded up to the multiple as
above), ``size * r``, or the original size * r (rounded); the evaluation combines the model's outputs on the views
(``tasks.seg_evaluate``).
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn as nn

from .seg_folders import IGNORE_INDEX
from .transforms import normalize

__all__ = ["SegTrainTransform", "SegEvalTransform", "SegBatchAugment", "eval_size", "check_scales"]


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """uint8 (C, H, W) image (bilinear/bicubic, rounded) or int64 (H, W) labels (nearest) resized with kornia."""
    from kornia.geometry.transform import resize
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype == torch.int64:  # labels: nearest, exact in float32 (values <= 255)
        return resize(x[None, None].float(), size, interpolation="nearest")[0, 0].long()
    out = resize(x[None].float(), size, interpolation=interpolation, align_corners=False, antialias=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


class SegTrainTransform:
    """Joint random scale, crop, flip and ignore-padding of (uint8 image (C, H, W), int64 labels (H, W)) to
    `crop_size` (see the module docstring)."""

    def __init__(self, crop_size: int | tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0),
                 base_scale: tuple[int, int] | None = None, hflip: float = 0.5, cat_max_ratio: float = 0.75,
                 seed: int = 0):
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"scale ratio range {ratio_range} is not (low, high) with 0 < low <= high; pass e.g. "
                             "(0.5, 2.0)")
        self.ratio_range, self.base_scale, self.hflip = tuple(ratio_range), base_scale, hflip
        self.cat_max_ratio, self.seed = cat_max_ratio, seed

    def scaled_size(self, h: int, w: int, ratio: float) -> tuple[int, int]:
        f = ratio
        if self.base_scale is not None:
            f *= min(max(self.base_scale) / max(h, w), min(self.base_scale) / min(h, w))
        return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))

    def _crop_box(self, labels: torch.Tensor, rng: random.Random) -> tuple[int, int, int, int]:
        h, w = labels.shape
        ch, cw = min(self.crop[0], h), min(self.crop[1], w)
        mixed = None  # mmseg's class-ratio test of the last box; up to 10 draws until a box passes
        for _ in range(10):
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            if self.cat_max_ratio >= 1:
                break
            if mixed is None or (ch, cw) != (h, w):  # a crop of the whole image is one box: test it once
                crop = labels[top:top + ch, left:left + cw]
                counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten())
                counts = counts[counts > 0]
                mixed = bool(len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio)
            if mixed:
                break
        return top, left, ch, cw

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, index: int = 0, epoch: int = 0):
        from kornia.geometry.transform import hflip
        rng = random.Random(hash((self.seed, epoch, index)))
        size = self.scaled_size(*labels.shape, rng.uniform(*self.ratio_range))
        image, labels = _resize(image, size, "bilinear"), _resize(labels, size, "nearest")
        top, left, ch, cw = self._crop_box(labels, rng)
        image, labels = image[:, top:top + ch, left:left + cw], labels[top:top + ch, left:left + cw]
        if rng.random() < self.hflip:
            image, labels = hflip(image), hflip(labels)
        out_img = torch.zeros((image.shape[0], *self.crop), dtype=torch.uint8)
        out_lab = torch.full(self.crop, IGNORE_INDEX, dtype=torch.int64)
        out_img[:, :ch, :cw], out_lab[:ch, :cw] = image, labels
        return out_img, out_lab


def check_scales(scales) -> tuple[float, ...]:
    """The multi-scale test's ratios as floats; a ValueError naming the fix for none, or one out of (0, 8]."""
    scales = tuple(float(s) for s in scales)
    if not scales or not all(0 < s <= 8 for s in scales):
        raise ValueError(f"test scales {scales}: give one or more ratios of the evaluation size in (0, 8], e.g. "
                         "--scales 0.75 1 1.25")
    return scales


def eval_size(h: int, w: int, short_side: int | None = None, size: tuple[int, int] | None = None,
              multiple: int = 32, scale: float = 1.0) -> tuple[int, int]:
    """The (height, width) the evaluation protocol resizes an h x w image to (see the module docstring), at
    `scale` times the protocol's size."""
    if size is not None:
        return round(size[0] * scale), round(size[1] * scale)
    if short_side is None:
        return round(h * scale), round(w * scale)
    short_side = round(short_side * scale)
    if h < w:
        return short_side, math.ceil(w / h * short_side / multiple) * multiple
    return math.ceil(h / w * short_side / multiple) * multiple, short_side


class SegEvalTransform:
    """The evaluation view: the image resized by the official protocol (``eval_size``, bicubic), the labels kept
    at the original size (the metric compares at that size). With several `scales` (the multi-scale test), a tuple
    of views instead, one per scale, each resized from the original image."""

    def __init__(self, short_side: int | None = None, size: tuple[int, int] | None = None, multiple: int = 32,
                 interpolation: str = "bicubic", scales: tuple[float, ...] = (1.0,)):
        if short_side is not None and size is not None:
            raise ValueError("pass either short_side (keep the aspect ratio) or size (a fixed H x W), not both")
        self.short_side, self.size, self.multiple, self.interpolation = short_side, size, multiple, interpolation
        self.scales = check_scales(scales)

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, index: int = 0, epoch: int = 0):
        views = tuple(_resize(image, eval_size(*image.shape[-2:], self.short_side, self.size, self.multiple, s),
                              self.interpolation) for s in self.scales)
        return (views if len(views) > 1 else views[0]), labels


class SegBatchAugment(nn.Module):
    """On the device: photometric jitter of the images only (training; kornia ``ColorJitter`` with mmseg's
    ``PhotoMetricDistortion`` ranges: brightness +-32/255, contrast and saturation 0.5..1.5, hue +-18/180 of the
    circle, each batch image with probability `p`), then normalisation. Masks are not touched."""

    def __init__(self, mean, std, jitter: bool = True, p: float = 0.5):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        self.jitter = None
        if jitter:
            from kornia.augmentation import ColorJitter
            colour = len(self.mean) == 3
            self.jitter = ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5 if colour else 0.0,
                                      hue=0.1 if colour else 0.0, p=p)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float().div_(255)
        if self.jitter is not None:
            x = self.jitter(x).clamp_(0, 1)
        return normalize(x, self.mean, self.std)

