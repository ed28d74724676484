"""Data: Fashion-MNIST (in memory, the default) and ImageNet-style folders, their transforms and batch iterators.

``open_dataset(data)`` says what a ``--data`` value is (no decoding yet); ``build_batches`` makes the train or eval
iterator for a model's data config.
"""
from __future__ import annotations

import os
from pathlib import Path

from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, find_fashion_mnist,
                            load_fashion_mnist, read_idx, write_idx)
from .folder import ImageFolder, open_image
from .info import DatasetInfo
from .loaders import FolderBatches, Shard, TensorBatches, epoch_order
from .transforms import (BatchAugment, DataConfig, EvalTransform, TrainTransform, create_transform, mixup_cutmix,
                         normalize, resolve_data_config)

__all__ = [
    "DatasetInfo", "open_dataset", "build_batches", "Shard", "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD", "find_fashion_mnist", "load_fashion_mnist", "read_idx", "write_idx", "ImageFolder",
    "open_image", "TensorBatches", "FolderBatches", "epoch_order", "BatchAugment", "DataConfig", "EvalTransform",
    "TrainTransform", "create_transform", "mixup_cutmix", "normalize", "resolve_data_config",
]

FASHION_MNIST = "fashion-mnist"


def open_dataset(data: str | os.PathLike | None = None, download: bool = True) -> DatasetInfo:
    """Resolve a --data value: None or "fashion-mnist" (found or downloaded, see fashion_mnist.py), a folder with
    Fashion-MNIST's idx files, or an ImageNet-style folder with ``train/`` and ``val/`` (or ``test/``) inside."""
    if data is None or str(data).lower() in (FASHION_MNIST, "fashion_mnist", "fashionmnist"):
        root = find_fashion_mnist(None, download=download)
        return DatasetInfo(FASHION_MNIST, root, list(FASHION_MNIST_CLASSES), 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {root} does not exist; pass --data with an ImageNet-style folder "
                                "(train/ and val/, a sub-folder per class), a folder of Fashion-MNIST idx files, "
                                "or leave --data out for Fashion-MNIST")
    if any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in root.iterdir()):
        find_fashion_mnist(root)  # raises naming the missing files
        return DatasetInfo(FASHION_MNIST, root, list(FASHION_MNIST_CLASSES), 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    eval_dir = next((d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() and eval_dir is None:
        raise ValueError(f"{root} is neither a Fashion-MNIST folder nor an ImageNet-style folder: it needs train/ "
                         "and val/ sub-folders, each with one sub-folder of images per class")
    ref = root / "train" if (root / "train").is_dir() else root / eval_dir
    classes = sorted(d.name for d in ref.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{ref} has no class sub-folders; put each class's images in {ref}/<class name>/")
    return DatasetInfo("folder", root, classes, 3, None, None, "train", eval_dir or "val")


def build_batches(info: DatasetInfo, *, train: bool, data_cfg: DataConfig, batch_size: int, shard: Shard = Shard(),
                  padding: int = 2, hflip: bool = True, limit: int | None = None,
                  rrc_scale: tuple[float, float] = (0.08, 1.0)):
    """The training iterator (train=True) or the evaluation iterator of `info`, yielding uint8 image batches.

    Fashion-MNIST trains on a random crop of the image zero-padded by `padding` and a horizontal flip; folders on
    a random resized crop (`rrc_scale`) and a flip; both evaluate with the model's eval protocol (`data_cfg`).
    `limit` keeps only the first `limit` images (quick runs and tests); None keeps all. `shard`: this process's
    part and the epochs' seed.
    """
    seed, rank, world, workers = shard
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is not a positive number of images; pass --batch-size 1 or more")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} would keep no images; pass a positive number, or leave it out to use all")
    size = data_cfg.input_size[-1]
    if info.kind == FASHION_MNIST:
        images, labels = info.arrays("train" if train else "test")
        if limit:
            images, labels = images[:limit], labels[:limit]
        if data_cfg.input_size[0] != 1:  # a 3-channel model on grey images: repeat the channel
            images = images.unsqueeze(1).expand(-1, data_cfg.input_size[0], -1, -1)
        return TensorBatches(images, labels, batch_size, size, train, seed, rank, world,
                             padding=padding if train else 0, hflip=hflip and train)
    mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
    # One listing per split and transform: the training and BN re-estimation batches share it. Sharing is safe:
    # FolderBatches.iterate sets the dataset's epoch before each pass, and passes never interleave.
    key = (train, mode, size, limit, tuple(rrc_scale), hflip, seed) if train else \
        (train, mode, size, limit, data_cfg.crop_pct, data_cfg.interpolation)
    ds = info._folders.get(key)
    if ds is None:
        if train:
            tf = TrainTransform(size, scale=rrc_scale, hflip=0.5 if hflip else 0.0, seed=seed)
            ds = ImageFolder(info.root / info.train_split, tf, mode, classes=info.classes)
        else:
            tf = EvalTransform(size, data_cfg.crop_pct, data_cfg.interpolation)
            ds = ImageFolder(info.root / info.eval_split, tf, mode, classes=info.classes)
        if limit:
            ds.samples = ds.samples[:limit]
        info._folders[key] = ds
    return FolderBatches(ds, batch_size, train, seed, rank, world, workers)


# ------------------------------------------------------------------------------------------------ segmentation
# Segmentation data (ADE20K, Cityscapes, folders of image/mask pairs, the embedded Fashion-MNIST scenes): batches of
# (uint8 images (B, C, H, W), int64 labels (B, H, W)) with 255 = ignore. See segmentation.py.
from .scenes import SCENE_CLASSES, FashionMNISTScenes, SceneSpec  # noqa: E402
from .seg_folders import CITYSCAPES_CLASSES, IGNORE_INDEX, LabelMap, SegmentationFolder, open_mask  # noqa: E402
from .seg_transforms import SegBatchAugment, SegEvalTransform, SegTrainTransform  # noqa: E402
from .segmentation import (SCENES, SegDatasetInfo, SegmentationBatches, build_segmentation_batches,  # noqa: E402
                           open_segmentation)

__all__ += [
    "SCENE_CLASSES", "FashionMNISTScenes", "SceneSpec", "CITYSCAPES_CLASSES", "IGNORE_INDEX", "LabelMap",
    "SegmentationFolder", "open_mask", "SegBatchAugment", "SegEvalTransform", "SegTrainTransform", "SCENES",
    "SegDatasetInfo", "SegmentationBatches", "build_segmentation_batches", "open_segmentation",
]
