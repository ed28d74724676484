"""Segmentation data: what a --data value names and the batch iterators of a segmentation run.

``open_segmentation(data)`` resolves None or "fashion-mnist-scenes" (the embedded default, see scenes.py), an
ADE20K folder, a Cityscapes folder, or a folder of image/mask pairs (see seg_folders.py).
``build_segmentation_batches`` makes the training or evaluation iterator. Batches are
``(uint8 images (B, C, H, W), int64 labels (B, H, W))`` with 255 = ignore; training crops all have the training
size, evaluation labels keep the dataset's own size (see seg_transforms.py).

The iterators are ``loaders.FolderBatches``: the same per-epoch order drawn from (seed, epoch), rank sharding,
resumption at a step, and skipping of unreadable images.

A segmentation task uses them as follows: training batches go through ``SegBatchAugment(info.mean, info.std)``
(photometric jitter of the images, normalisation) and a cross-entropy with ``ignore_index=255``; evaluation
batches are normalised (``transforms.normalize``) and the logits scored by ``tasks.seg_metrics.SegmentationMetrics``
(which resizes them to the labels' size). ADE20K and folders of mixed image sizes evaluate with batch size 1.

    info = open_segmentation()                      # the Fashion-MNIST scenes: 11 classes, 0 = background
    train = build_segmentation_batches(info, train=True, crop_size=256, batch_size=16, shard=Shard(seed=0))
    val = build_segmentation_batches(info, train=False, crop_size=256, batch_size=16)
    for images, labels in train.iterate(epoch):     # uint8 (B, 3, 256, 256), int64 (B, 256, 256)
        ...
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fashion_mnist import find_fashion_mnist
from .info import DatasetInfo
from .loaders import FolderBatches, Shard
from .scenes import SCENE_CLASSES, FashionMNISTScenes, SceneSpec
from .seg_folders import (ADE20K_CLASSES, CITYSCAPES_CLASSES, IGNORE_INDEX, LabelMap, SegmentationFolder,
                          ade20k_pairs, cityscapes_pairs, folder_pairs, read_classes_file)
from .seg_transforms import SegEvalTransform, SegTrainTransform
from ..constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SCENES", "SegDatasetInfo", "open_segmentation", "looks_like_segmentation", "build_segmentation_batches",
           "SegmentationBatches"]

SCENES = "fashion-mnist-scenes"


@dataclass
class SegDatasetInfo(DatasetInfo):
    """A segmentation dataset (``DatasetInfo``: label i = classes[i], `ignore_index` 255 unlabelled) and its official
    sizes: ``base_scale`` of the training rescale (None: relative to the image), ``eval_short_side`` or
    ``eval_size``; for the Fashion-MNIST scenes, how many and which."""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX
    base_scale: tuple[int, int] | None = None
    eval_short_side: int | None = None
    eval_size: tuple[int, int] | None = None
    scenes: tuple[int, int] = (10_000, 1_000)  # training and evaluation scenes (fashion-mnist-scenes)
    scene_seed: int = 0  # the scenes' generator seed: the same dataset whatever the run's seed
    scene_spec: SceneSpec = field(default_factory=SceneSpec)


def looks_like_segmentation(data: str | os.PathLike) -> bool:
    """`data` names a segmentation dataset: the scenes, or a folder laid out as ADE20K, Cityscapes or image/mask
    pairs (which an ImageNet-style reader would take for classes named "images" and "masks")."""
    if str(data).lower() in (SCENES, "scenes"):
        return True
    root = Path(data).expanduser()
    layouts = (("ADEChallengeData2016",), ("images/training", "annotations/training"), ("leftImg8bit", "gtFine"),
               ("train/images", "train/masks"), ("val/images", "val/masks"))
    return root.is_dir() and any(all((root / p).is_dir() for p in layout) for layout in layouts)


def open_segmentation(data: str | os.PathLike | None = None, *, num_classes: int | None = None,
                      default_num_classes: int | None = None, download: bool = True) -> SegDatasetInfo:
    """Resolve a segmentation --data value (see the module docstring); a folder of Fashion-MNIST's idx files gives
    the scenes of that copy. A folder of pairs takes its classes from ``classes.txt`` at its root (which must
    agree with `num_classes` when given), else from `num_classes`, else from `default_num_classes` (a saved
    model's count), named "0", "1", ..."""
    if data is None or str(data).lower() in (SCENES, "scenes"):
        return SegDatasetInfo(SCENES, find_fashion_mnist(None, download=download), list(SCENE_CLASSES),
                              train_split="train", eval_split="test")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation dataset {root} does not exist; pass an ADE20K folder "
                                "(ADEChallengeData2016), a Cityscapes folder (leftImg8bit/, gtFine/), a folder of "
                                "image/mask pairs (train/ and val/, each with images/ and masks/), or leave --data "
                                "out for the Fashion-MNIST scenes")
    if any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in root.iterdir()):  # scenes from this copy
        return SegDatasetInfo(SCENES, find_fashion_mnist(root), list(SCENE_CLASSES), train_split="train",
                              eval_split="test")
    if (root / "ADEChallengeData2016").is_dir() or (root / "images" / "training").is_dir():
        return SegDatasetInfo("ade20k", root, list(ADE20K_CLASSES), train_split="training",
                              eval_split="validation", base_scale=(2048, 512), eval_short_side=512)
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return SegDatasetInfo("cityscapes", root, list(CITYSCAPES_CLASSES), train_split="train", eval_split="val",
                              base_scale=(2048, 1024), eval_size=(1024, 2048))
    eval_split = next((d for d in ("val", "validation", "test") if (root / d / "images").is_dir()), None)
    if not (root / "train" / "images").is_dir() and eval_split is None:
        raise ValueError(f"{root} is not a segmentation dataset: expected ADEChallengeData2016/, leftImg8bit/ and "
                         "gtFine/ (Cityscapes), or train/ and val/ folders each holding images/ and masks/")
    if (root / "classes.txt").is_file():
        classes = read_classes_file(root / "classes.txt")
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"{root / 'classes.txt'} lists {len(classes)} classes, not num_classes={num_classes}; "
                             "drop num_classes or fix classes.txt")
    elif (num_classes or default_num_classes) is not None:
        classes = [str(i) for i in range(num_classes or default_num_classes)]
    else:
        raise ValueError(f"{root} does not say how many classes its masks hold: add {root / 'classes.txt'} (one "
                         "class name a line, line i = mask value i) or pass --num-classes N (num_classes=N)")
    LabelMap.identity(len(classes))  # checks the count
    return SegDatasetInfo("folder", root, classes, train_split="train", eval_split=eval_split or "val")


def _pairs(info: SegDatasetInfo, split: str) -> tuple[list[tuple[str, str]], LabelMap]:
    if info.kind == "ade20k":
        return ade20k_pairs(info.root, split), LabelMap.ade20k()
    if info.kind == "cityscapes":
        return cityscapes_pairs(info.root, split), LabelMap.cityscapes()
    return folder_pairs(info.root / split), LabelMap.identity(info.num_classes)


class SegmentationBatches(FolderBatches):
    """``FolderBatches`` over a segmentation dataset: (uint8 images (B, C, H, W), int64 labels (B, H, W))."""

    def iterate(self, epoch: int = 0, start_step: int = 0):
        try:
            yield from super().iterate(epoch, start_step)
        except RuntimeError as e:
            if "stack expects each tensor to be equal size" not in str(e):
                raise
            raise ValueError(f"evaluation images of different sizes cannot share a batch of {self.batch_size} "
                             f"({e}); evaluate with batch size 1, as the official protocol does") from None


def build_segmentation_batches(info: SegDatasetInfo, *, train: bool, crop_size: int, batch_size: int,
                               shard: Shard = Shard(), limit: int | None = None,
                               ratio_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                               eval_short_side: int | None = None, eval_size: tuple[int, int] | None = None,
                               cache_dir: str | os.PathLike | None = None,
                               scene_items: tuple[int, int] | None = None,
                               eval_scales: tuple[float, ...] = (1.0,)) -> SegmentationBatches:
    """The training iterator (random scale, crop to `crop_size`, flip; see seg_transforms.py) or the evaluation
    iterator (the dataset's official protocol, or `eval_short_side` / `eval_size` when given) of `info`.
    `limit` keeps the first `limit` samples; `cache_dir` caches generated scenes; `scene_items` (training on the
    embedded scenes only) sets the fewest and most items per scene (denser scenes: more labelled garment pixels);
    several `eval_scales` make each evaluation image a tuple of views (the multi-scale test, ``SegEvalTransform``);
    `shard`: this process's part and the epochs' seed."""
    seed, rank, world, workers = shard
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is not a positive number of images; pass --batch-size 1 or more")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} would keep no images; pass a positive number, or leave it out to use all")
    if train:
        tf = SegTrainTransform(crop_size, ratio_range, info.base_scale, hflip=0.5 if hflip else 0.0, seed=seed)
    elif eval_short_side is not None or eval_size is not None:
        tf = SegEvalTransform(eval_short_side, eval_size, scales=eval_scales)
    else:
        tf = SegEvalTransform(info.eval_short_side, info.eval_size, scales=eval_scales)
    if info.kind == SCENES:
        split = info.train_split if train else info.eval_split
        images, labels = info.arrays(split)
        n = info.scenes[0] if train else info.scenes[1]
        spec = info.scene_spec
        if train and scene_items is not None:
            spec = dataclasses.replace(spec, items=(int(scene_items[0]), int(scene_items[1])))
        ds = FashionMNISTScenes(images, labels, min(n, limit or n), split=split, seed=info.scene_seed,
                                spec=spec, transform=tf, cache_dir=cache_dir)
    else:
        pairs, label_map = _pairs(info, info.train_split if train else info.eval_split)
        ds = SegmentationFolder(pairs[:limit] if limit else pairs, label_map, tf)
    return SegmentationBatches(ds, batch_size, train, seed, rank, world, workers)
