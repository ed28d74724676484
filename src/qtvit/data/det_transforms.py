"""Joint augmentation of an image with its boxes and instance masks, by torchvision's transforms v2.

``detection_transform(train, size)`` returns ``transform(image, target) -> (image, target)`` for the detection
datasets (``qtvit.data.coco``, ``qtvit.data.scene_instances``): ``image`` uint8 (3, H, W), ``target`` in
torchvision's detection format (``boxes`` xyxy, ``labels``, optional ``masks`` (N, H, W), ``area``, ``iscrowd``,
``image_id``). Training: a random resize of the shorter side to ``scale`` x ``size``, a random ``size`` x ``size``
crop (zero-padded when smaller), a horizontal flip, then boxes clamped to the crop and the objects the crop cut
away (boxes under ``min_box`` px a side) dropped with their labels and masks. Evaluation: the image unchanged (the
detector's own transform resizes it, and predictions come back in its coordinates). Both return a float image in
0..1, which the detectors expect, and recompute ``area`` (mask pixels, or box area without masks).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["detection_transform"]


def _v2():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except ImportError as e:
        raise ImportError("detection transforms need torchvision: pip install 'qtvit[detect]'") from e
    return v2, tv_tensors


def detection_transform(train: bool, size: int = 256, scale: tuple[float, float] = (0.5, 2.0), flip: float = 0.5,
                        min_box: float = 1.0) -> Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]:
    """The training (``train``) or evaluation transform described in the module docstring."""
    v2, tv_tensors = _v2()
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale={scale}: need 0 < low <= high (factors of size for the shorter side)")
    steps = [v2.RandomResize(max(1, round(size * scale[0])), max(2, round(size * scale[1]) + 1)),
             v2.RandomCrop(size, pad_if_needed=True), v2.RandomHorizontalFlip(flip), v2.ClampBoundingBoxes(),
             v2.SanitizeBoundingBoxes(min_size=min_box)] if train else [v2.Identity()]
    pipeline = v2.Compose(steps)

    def transform(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = image.shape[-2:]
        t = dict(target, boxes=tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)))
        if "masks" in t:
            t["masks"] = tv_tensors.Mask(target["masks"])
        for key in ("area", "iscrowd"):  # per-object tensors SanitizeBoundingBoxes would not filter: rebuilt below
            t.pop(key, None)
        image, t = pipeline(tv_tensors.Image(image), t)
        out = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        boxes = out["boxes"]
        out["area"] = (out["masks"].flatten(1).sum(1).float() if "masks" in out
                       else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        out["iscrowd"] = torch.zeros(len(boxes), dtype=torch.int64)
        return image.as_subclass(torch.Tensor).float().div_(255), out

    return transform
