"""Transforms. Decoding and cropping run per image in the loader workers (PIL, uint8 out); normalisation and the
heavy augmentations (RandAugment, random erasing, mixup/cutmix) run batched on the device.

Every random choice is drawn from a generator seeded by (seed, epoch, sample index) or saved in the training state,
so a run is reproducible, resumable and independent of the number of workers.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .images import to_8bit

__all__ = [
    "DataConfig", "resolve_data_config", "create_transform", "EvalTransform", "TrainTransform", "pil_to_uint8",
    "normalize", "tensor_eval_images", "tensor_train_images", "mixup_cutmix", "BatchAugment",
]

_PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass
class DataConfig:
    """The eval protocol of a model: its input size, crop ratio, resize interpolation and normalisation."""
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    # A mapping too, so that timm's `create_transform(**resolve_data_config(model=model))` works.
    def keys(self):
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


class ImageTransform:
    """A PIL image in (any mode), the model's normalised float32 (C, H, W) tensor out: 8 bits by the rules of
    ``data.images``, the crop of `crop` (EvalTransform or TrainTransform), then (x / 255 - mean) / std."""

    def __init__(self, crop, mean, std, mode: str):
        self.crop, self.mean, self.std, self.mode = crop, tuple(mean), tuple(std), mode

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"create_transform's transform takes a PIL image, got {type(image).__name__}; open files "
                            "with qtvit.data.open_image(path) or PIL.Image.open")
        return normalize(self.crop(to_8bit(image).convert(self.mode)).unsqueeze(0), self.mean, self.std)[0]

    def __repr__(self) -> str:
        return f"ImageTransform({self.crop.__class__.__name__}, mean={self.mean}, std={self.std}, mode={self.mode})"


def create_transform(input_size=(3, 224, 224), is_training: bool = False, interpolation: str = "bicubic",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.875,
                     scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5) -> ImageTransform:
    """timm's ``create_transform``: ``create_transform(**resolve_data_config(model=model))`` gives the model's eval
    preprocessing (resize the short side to size / crop_pct, centre crop, normalise); ``is_training=True`` a random
    resized crop (`scale`) and flip instead. The batched augmentations of training (RandAugment, mixup) are not part
    of it. An int `input_size` is a square side."""
    size = input_size if isinstance(input_size, int) else input_size[-1]
    channels = len(mean) if isinstance(input_size, int) else input_size[0]
    if interpolation not in _PIL_INTERP:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {', '.join(_PIL_INTERP)}")
    crop = TrainTransform(size, scale=scale, hflip=hflip, interpolation=interpolation) if is_training else \
        EvalTransform(size, crop_pct, interpolation)
    return ImageTransform(crop, mean, std, "L" if channels == 1 else "RGB")


def resolve_data_config(model: nn.Module | None = None, in_chans: int | None = None, img_size: int | None = None,
                        crop_pct: float | None = None, mean=None, std=None,
                        dataset_mean=None, dataset_std=None) -> DataConfig:
    """The DataConfig from the model's ``pretrained_cfg``, overridden by explicit arguments: timm's
    ``resolve_data_config(model=model)``, and a mapping, so ``create_transform(**cfg)`` takes it.

    When the model's mean/std do not have one value per input channel (e.g. ImageNet RGB stats on a 1-channel
    Fashion-MNIST model), the dataset's own statistics (`dataset_mean`/`dataset_std`) are used instead.
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    c = in_chans or (cfg.get("input_size") or (3,))[0]
    size = img_size or (cfg.get("input_size") or (3, 224, 224))[-1]
    m = mean or cfg.get("mean") or IMAGENET_MEAN
    s = std or cfg.get("std") or IMAGENET_STD
    if len(m) != c or len(s) != c:
        if dataset_mean is not None and len(dataset_mean) == c:
            m, s = dataset_mean, dataset_std
        elif len(m) == 3 and c == 1:  # grey from RGB stats: their average
            m, s = (sum(m) / 3,), (sum(s) / 3,)
        else:
            raise ValueError(f"mean/std {m}/{s} do not match {c} input channels; pass --mean/--std with {c} values")
    return DataConfig(input_size=(c, size, size), crop_pct=float(crop_pct or cfg.get("crop_pct") or 1.0),
                      interpolation=cfg.get("interpolation") or "bicubic", mean=tuple(m), std=tuple(s))


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 CHW tensor."""
    a = np.array(image, dtype=np.uint8)  # a writable copy
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class EvalTransform:
    """The official eval protocol: resize the short side to ceil(size / crop_pct) (bicubic), centre-crop `size`."""

    def __init__(self, size: int, crop_pct: float = 1.0, interpolation: str = "bicubic"):
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.resize = size, math.ceil(size / crop_pct)
        self.interp = _PIL_INTERP[interpolation]

    def __call__(self, image: Image.Image, index: int = 0, epoch: int = 0) -> torch.Tensor:
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.resize, round(w * scale)), max(self.resize, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), self.interp)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return pil_to_uint8(image.crop((left, top, left + self.size, top + self.size)))


class TrainTransform:
    """Random resized crop (scale, ratio as in Inception/timm) and horizontal flip, seeded per sample."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 interpolation: str = "bicubic", seed: int = 0):
        self.size, self.scale, self.ratio, self.hflip, self.seed = size, scale, ratio, hflip, seed
        self.interp = _PIL_INTERP[interpolation]

    def __call__(self, image: Image.Image, index: int = 0, epoch: int = 0) -> torch.Tensor:
        rng = random.Random(hash((self.seed, epoch, index)))
        w, h = image.size
        box = (0, 0, w, h)
        for _ in range(10):
            area = w * h * rng.uniform(*self.scale)
            log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
            ar = math.exp(rng.uniform(*log_r))
            cw, ch = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
                box = (left, top, left + cw, top + ch)
                break
        else:  # fall back to a centre crop of the clamped ratio
            r = w / h
            cw, ch = (w, round(w / self.ratio[1])) if r > self.ratio[1] else (
                (round(h * self.ratio[0]), h) if r < self.ratio[0] else (w, h))
            box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
        image = image.resize((self.size, self.size), self.interp, box=box)
        if rng.random() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_uint8(image)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (or [0, 1] float) images to normalised float32."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, C, size, size): zero-pad (Fashion-MNIST's background is 0) or resize."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h <= size and w <= size:
        pt, pl = (size - h) // 2, (size - w) // 2
        return F.pad(x, (pl, size - w - pl, pt, size - h - pt))
    return F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True).round_().clamp_(0, 255).to(torch.uint8)


def tensor_eval_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Eval view of in-memory uint8 images: fitted to `size` (see `_fit`), uint8 (N, C, size, size)."""
    return _fit(images, size)


def tensor_train_images(images: torch.Tensor, size: int, crop_xy: torch.Tensor, flip: torch.Tensor,
                        padding: int) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, batched: `crop_xy` (N, 2) offsets in [0, 2*padding]."""
    x = _fit(images, size)
    if padding:
        x = F.pad(x, (padding,) * 4)
        n, c = x.shape[:2]
        ar = torch.arange(size, device=x.device)
        rows = (crop_xy[:, 1:2] + ar).view(n, 1, size, 1).expand(n, c, size, size + 2 * padding)
        x = x.gather(2, rows)
        cols = (crop_xy[:, 0:1] + ar).view(n, 1, 1, size).expand(n, c, size, size)
        x = x.gather(3, cols)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def mixup_cutmix(x: torch.Tensor, target: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch, mixup or cutmix (equal chance when both are on), λ ~ Beta(α, α), as in the official recipe.

    `target` is a (B, classes) soft target; the batch is mixed with its flipped self (as timm does), so no random
    permutation is needed. kornia's RandomMixUpV2 draws λ uniformly instead of from Beta(α, α), hence this function.
    """
    modes = [m for m, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
    if not modes:
        return x, target
    mode = modes[int(torch.randint(len(modes), (1,), generator=generator))]
    alpha = mixup_alpha if mode == "mixup" else cutmix_alpha
    lam = _beta(alpha, generator)
    if mode == "mixup":
        x = x * lam + x.flip(0) * (1 - lam)
    else:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(h, (1,), generator=generator))
        cx = int(torch.randint(w, (1,), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    return x, target * lam + target.flip(0) * (1 - lam)


def _beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(a, a) from two Gammas, drawn with our generator (torch.distributions uses the global RNG).
    u = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=generator)
    return float(u[0] / u.sum())


class BatchAugment(nn.Module):
    """Batched augmentation on the device, after decoding: RandAugment (kornia) on [0, 1] images, normalisation,
    random erasing (kornia), then mixup/cutmix. kornia draws from the global torch RNG (saved in the train state)."""

    def __init__(self, mean, std, randaug_n: int = 0, randaug_m: int = 0, erase_prob: float = 0.0):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        self.randaug = self.erase = None
        if randaug_n > 0:
            from kornia.augmentation.auto import RandAugment
            self.randaug = RandAugment(n=randaug_n, m=randaug_m)
        if erase_prob > 0:
            from kornia.augmentation import RandomErasing
            self.erase = RandomErasing(p=erase_prob, value=0.0)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float().div_(255)
        if self.randaug is not None:
            x = self.randaug(x).clamp_(0, 1)
        x = normalize(x, self.mean, self.std)
        if self.erase is not None:
            x = self.erase(x)
        return x
