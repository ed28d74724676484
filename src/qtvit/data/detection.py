"""Detection data: what a --data value names for detection, and the batch iterators of a detection run.

``open_detection(data)`` resolves:

- None, "scenes" or "fashion-mnist-scenes": the embedded default, the Fashion-MNIST scenes with their instances
  (``scene_instances.py``; a folder of Fashion-MNIST's idx files gives the scenes of that copy);
- COCO 2017's layout: ``annotations/instances_{train,val}2017.json`` with images in ``{train,val}2017/`` (either
  file alone is a set to validate on, or to train and evaluate on);
- a folder with ``train/`` and ``val/`` sub-folders, each a COCO-format folder (one json, see ``coco.find_coco``);
- any other folder with one COCO-format json, or the json itself: one set, trained and evaluated on.

Classes count the background, torchvision's convention: ``classes[0]`` is "background" and label k (1..K) is
category ``cat_ids[k - 1]`` of the file (COCO's ids 1..90 with gaps), so a detector has ``len(classes)`` = K + 1
classes. ``build_detection_batches`` yields ``(images, targets)`` as lists (images of their own sizes do not stack):
training images are float (3, size, size) crops in 0..1 by ``det_transforms.detection_transform`` (random resize,
crop, flip), their augmentation drawn from (seed, epoch, index) alone, so that loader workers and resumed runs draw
the same; evaluation images are the files' own, float in 0..1 (the detector resizes them itself).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .coco import CocoDetection, CocoFormatError, find_coco
from .det_transforms import detection_transform
from .fashion_mnist import find_fashion_mnist
from .info import DatasetInfo
from .loaders import FolderBatches, Shard, _Failed
from .scene_instances import FashionMNISTSceneInstances
from .scenes import SCENE_CLASSES, FashionMNISTScenes, SceneSpec

__all__ = ["DetDatasetInfo", "open_detection", "looks_like_coco", "build_detection_batches", "DetectionBatches",
           "DetectionItems", "collate_lists", "SCENE_NAMES", "BACKGROUND"]

SCENE_NAMES = ("fashion-mnist-scenes", "scenes")
BACKGROUND = "background"
COCO = "coco"


@dataclass
class DetDatasetInfo(DatasetInfo):
    """A detection dataset (``DatasetInfo``; ``classes[0]`` the background): ``cat_ids`` the file's category id of
    each label 1..K; for COCO-format data the (annotation file, image folder) of each split (None: the split is
    missing); for the scenes, how many and which."""
    cat_ids: list[int] = field(default_factory=list)
    train_files: tuple[Path, Path] | None = None
    eval_files: tuple[Path, Path] | None = None
    scenes: tuple[int, int] = (10_000, 1_000)  # training and evaluation scenes
    scene_seed: int = 0
    scene_spec: SceneSpec = field(default_factory=SceneSpec)
    _coco: dict = field(default_factory=dict, repr=False, compare=False)

    def coco(self, train: bool) -> CocoDetection:
        """The split's annotation file, read and checked once per run (``CocoDetection``)."""
        files = self.train_files if train else self.eval_files
        if files is None:
            which = "training" if train else "evaluation"
            raise FileNotFoundError(f"{self.root}: no {which} annotations (COCO 2017 keeps them in "
                                    f"annotations/instances_{'train' if train else 'val'}2017.json)")
        if files not in self._coco:
            self._coco[files] = CocoDetection(*files)
        return self._coco[files]


def looks_like_coco(data: str | os.PathLike) -> bool:
    """`data` is laid out as COCO 2017 (``annotations/instances_*2017.json``) or is a json file: detection data,
    which the classification and segmentation readers would misread."""
    root = Path(data).expanduser()
    return root.suffix == ".json" or any((root / "annotations").glob("instances_*2017.json"))


def _scenes(root: Path) -> DetDatasetInfo:
    return DetDatasetInfo(SCENE_NAMES[0], root, list(SCENE_CLASSES), train_split="train", eval_split="test",
                          cat_ids=list(range(1, len(SCENE_CLASSES))))


def _splits(root: Path) -> tuple[tuple[Path, Path] | None, tuple[Path, Path] | None]:
    """(training, evaluation) (annotation file, image folder) of a COCO-format --data value."""
    if root.is_dir() and any((root / "annotations").glob("instances_*2017.json")):
        have = {s: (root / "annotations" / f"instances_{s}2017.json").is_file() for s in ("train", "val")}
        train = find_coco(root, "train") if have["train"] else None
        val = find_coco(root, "val") if have["val"] else None
        return train or val, val or train
    if (root / "train").is_dir() and (root / "val").is_dir():
        return find_coco(root / "train"), find_coco(root / "val")
    files = find_coco(root)
    return files, files


def open_detection(data: str | os.PathLike | None = None, *, download: bool = True) -> DetDatasetInfo:
    """Resolve a detection --data value (see the module docstring). A COCO-format evaluation file is read and checked
    here (its categories are the classes); the training file when the batches are built."""
    if data is None or str(data).lower() in SCENE_NAMES:
        return _scenes(find_fashion_mnist(None, download=download))
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"detection dataset {root} does not exist; pass a COCO 2017 folder (annotations/"
                                "instances_{train,val}2017.json, train2017/, val2017/), a folder with one COCO-format "
                                "json, or leave --data out for the Fashion-MNIST scenes")
    if root.is_dir() and any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in root.iterdir()):
        return _scenes(find_fashion_mnist(root))
    train, val = _splits(root)
    info = DetDatasetInfo(COCO, root, [], train_split=str(train[0]), eval_split=str(val[0]), train_files=train,
                          eval_files=val)
    ds = info.coco(train=False)
    info.classes, info.cat_ids = [BACKGROUND, *ds.categories], list(ds.cat_ids)
    if not ds.cat_ids:
        raise CocoFormatError(f"{val[0]}: its 'categories' list is empty; a detector needs at least one category")
    return info


# ----------------------------------------------------------------------------------------------- items, batches
class DetectionItems(torch.utils.data.Dataset):
    """The first `length` items of a detection dataset (``CocoDetection`` or the scenes' instances, untransformed),
    each through `transform`: ``transform(image, target)`` under the torch RNG seeded from (seed, epoch, index), which
    it leaves as it was. ``epoch`` is set by the batches before each pass. ``cat_ids``, ``categories``: the labels'
    category ids and names; ``coco``: the annotation json (COCO-format data), None for the scenes (their ground truth
    is built from the targets)."""

    def __init__(self, base, length: int, transform: Callable, cat_ids: list[int], categories: list[str],
                 coco: dict | None = None, seed: int = 0):
        self.base, self.length, self.transform = base, length, transform
        self.cat_ids, self.categories, self.coco, self.seed = cat_ids, categories, coco, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        image, target = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
            return self.transform(image, target)


def collate_lists(items: list) -> tuple[list | None, list | None, list]:
    """DataLoader collate for detection items: (images, targets) as lists; an item that failed in a worker (a bad
    annotation or image file) comes back alone, to be raised (see ``loaders._Failed``)."""
    failed = [it for it in items if isinstance(it, _Failed)]
    if failed:
        return None, None, failed[:1]
    return [im for im, _ in items], [t for _, t in items], []


class DetectionBatches(FolderBatches):
    """``FolderBatches`` over a detection dataset: (list of float images (3, H, W), list of target dicts)."""

    collate = staticmethod(collate_lists)


def _base(info: DetDatasetInfo, train: bool, scene_items: tuple[int, int] | None) -> tuple[Any, dict | None]:
    """(untransformed dataset, its annotation json or None) of a split."""
    if info.kind != COCO:
        split = info.train_split if train else info.eval_split
        images, labels = info.arrays(split)
        spec = info.scene_spec
        if train and scene_items is not None:
            spec = dataclasses.replace(spec, items=(int(scene_items[0]), int(scene_items[1])))
        n = info.scenes[0] if train else info.scenes[1]
        return FashionMNISTSceneInstances(FashionMNISTScenes(images, labels, n, split=split, seed=info.scene_seed,
                                                             spec=spec)), None
    ds = info.coco(train)
    if list(ds.cat_ids) != list(info.cat_ids):
        raise CocoFormatError(f"{ds.ann_file}: its category ids {ds.cat_ids[:8]}... differ from the evaluation "
                              f"file's {info.cat_ids[:8]}...; both splits need the same categories")
    return ds, ds.coco


def build_detection_batches(info: DetDatasetInfo, *, train: bool, size: int, batch_size: int,
                            shard: Shard = Shard(), limit: int | None = None,
                            scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                            scene_items: tuple[int, int] | None = None) -> DetectionBatches:
    """The training iterator (random resize by `scale_range` x `size`, `size` x `size` crop, flip) or the evaluation
    iterator (the images as they are) of `info`; `limit` keeps the first `limit` images, `scene_items` (training on
    the scenes) the fewest and most items per scene; `shard`: this process's part and the epochs' seed."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is not a positive number of images; pass --batch-size 1 or more")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} would keep no images; pass a positive number, or leave it out to use all")
    base, coco = _base(info, train, scene_items)
    tf = detection_transform(train, size, tuple(scale_range), flip=0.5 if hflip and train else 0.0)
    n = min(len(base), limit or len(base))
    if n == 0:
        raise ValueError(f"{info.root}: the {'training' if train else 'evaluation'} split holds no image")
    items = DetectionItems(base, n, tf, info.cat_ids, info.classes[1:], coco, shard.seed)
    return DetectionBatches(items, batch_size, train, shard.seed, shard.rank, shard.world, shard.workers)
