"""The one description of a dataset that a run, validation and prediction read: what a --data value names (kind,
where), its classes, its channels and statistics (mean/std), which label is ignored, and its layout (the split
folders). Class names for per_class.csv, the ignore index of the loss and metric, and the dataset's side of the data
config are read from it, never from a model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fashion_mnist import load_fashion_mnist

__all__ = ["DatasetInfo"]


@dataclass
class DatasetInfo:
    """A dataset: `kind` ("fashion-mnist", "folder", "fashion-mnist-scenes", "ade20k", "cityscapes"), `root`, the
    class names (label i = classes[i]), the images' channels, the dataset's own mean/std when known, the training and
    evaluation splits (folders, or Fashion-MNIST's "train"/"test"), and `ignore_index`: the label of unlabelled
    pixels (None where every label is a class).

    ``arrays(split)`` reads Fashion-MNIST's idx files once per split and keeps them, so the training, evaluation and
    BN re-estimation batches of a run share one copy in memory; an image folder is likewise listed once for the
    same transform (see build_batches)."""
    kind: str
    root: Path | None
    classes: list[str]
    in_chans: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_split: str = "train"
    eval_split: str = "val"
    ignore_index: int | None = None
    _arrays: dict = field(default_factory=dict, repr=False, compare=False)
    _folders: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def arrays(self, split: str):
        """(uint8 images, int64 labels) of Fashion-MNIST's "train" or "test" split, read on first use."""
        if split not in self._arrays:
            self._arrays[split] = load_fashion_mnist(split, self.root)
        return self._arrays[split]
