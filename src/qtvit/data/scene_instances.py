"""Instances of the Fashion-MNIST scenes: the embedded default detection dataset (``qtvit.data.scenes``).

Every item of a scene is one instance: its **visible** mask (its silhouette, as the scene's labels draw it, less
the pixels of every item painted over it later), the tight box of that mask and its class (the scene label:
Fashion-MNIST class + 1, so 1..10 with 0 the background, torchvision's convention). Items left with fewer than
``min_pixels`` visible pixels are dropped (a garment hidden under others is no object to find); fragments are
background, as in the segmentation labels. The images are the segmentation scenes' images, unchanged, so the
instances are as deterministic as the scenes: the same on every machine, in every worker and epoch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .scenes import FashionMNISTScenes, SceneLayout, scale_item

__all__ = ["SceneInstances", "FashionMNISTSceneInstances", "scene_instances"]


class SceneInstances(dict):
    """A target in torchvision's detection format: ``boxes`` float (N, 4) xyxy in pixels (x2, y2 exclusive),
    ``labels`` int64 (N,), ``masks`` uint8 (N, H, W), ``area`` float (N,) (mask pixels), ``iscrowd`` int64 (N,)."""


def _silhouettes(scenes: FashionMNISTScenes, layout: SceneLayout) -> list[np.ndarray]:
    """Each item's full-canvas silhouette, bool (S, S), in paint order (the pixels ``render`` paints for it)."""
    size = scenes.spec.size
    out = []
    for item in layout.items:
        mask = np.zeros((size, size), bool)
        mask[item.y:item.y + item.height, item.x:item.x + item.width] = \
            scale_item(scenes.images[item.source], item) > scenes.spec.threshold
        out.append(mask)
    return out


def scene_instances(scenes: FashionMNISTScenes, i: int, min_pixels: int = 16) -> SceneInstances:
    """The instances of scene ``i`` (see the module docstring), bottom to top in paint order."""
    layout = scenes.layout(i)
    silhouettes = _silhouettes(scenes, layout)
    covered = np.zeros_like(silhouettes[0]) if silhouettes else None
    visible = []
    for mask in reversed(silhouettes):  # top to bottom: an item shows where nothing later covers it
        visible.append(mask & ~covered)
        covered |= mask
    visible.reverse()
    keep = [k for k, m in enumerate(visible) if m.sum() >= min_pixels]
    size = scenes.spec.size
    masks = np.stack([visible[k] for k in keep]).astype(np.uint8) if keep else np.zeros((0, size, size), np.uint8)
    boxes = np.zeros((len(keep), 4), np.float32)
    for n, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[n] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return SceneInstances(
        boxes=torch.from_numpy(boxes), labels=torch.tensor([layout.items[k].label for k in keep], dtype=torch.int64),
        masks=torch.from_numpy(masks), area=torch.from_numpy(masks.reshape(len(keep), -1).sum(1).astype(np.float32)),
        iscrowd=torch.zeros(len(keep), dtype=torch.int64))


class FashionMNISTSceneInstances(torch.utils.data.Dataset):
    """The scenes of ``scenes`` with their instances: item ``i`` is ``(uint8 image (3, S, S), target)`` with the
    target of ``scene_instances`` plus ``image_id`` (= i), or ``transform(image, target)`` with a transform (e.g.
    ``qtvit.data.det_transforms.detection_transform``)."""

    def __init__(self, scenes: FashionMNISTScenes, *, min_pixels: int = 16, transform: Callable | None = None):
        if min_pixels < 1:
            raise ValueError(f"min_pixels={min_pixels}: an instance needs at least one visible pixel")
        self.scenes, self.min_pixels, self.transform = scenes, min_pixels, transform

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int):
        image, _ = self.scenes.scene(i)
        target = scene_instances(self.scenes, i, self.min_pixels)
        target["image_id"] = i
        return self.transform(image, target) if self.transform is not None else (image, target)
