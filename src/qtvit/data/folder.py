"""ImageNet-style image folders (``root/<class>/<image>``), decoded with PIL (see images.py); no torchvision.

An image that cannot be read or decoded is skipped, never fatal and never replaced by another sample: the dataset
returns an ``Unreadable`` marker in its place, the batch iterator (loaders.FolderBatches) drops it from the batch,
which comes out smaller, and counts each unreadable file once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .images import MAX_PIXELS_ENV, max_image_pixels, open_image, set_max_image_pixels

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "Unreadable", "open_image", "set_max_image_pixels",
           "max_image_pixels", "MAX_PIXELS_ENV", "scan_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Unreadable:
    """What ImageFolder returns for a file it cannot decode: the file and why (picklable, so it crosses from
    loader workers to the main process, which counts distinct paths)."""
    path: str
    reason: str


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_images(class_dir: str | os.PathLike, no_follow: list[str], visited: set[str]) -> list[str]:
    """The image files under `class_dir`, sorted by folder then name, each listed once.

    Symlinked directories are followed (datasets are often assembled from links to other disks) unless they lead
    into one of the real paths `no_follow` (the image folder and its class folders) or to one of them or above:
    such a link lists files that belong to a class folder of their own (or loops back to them), which would count
    them twice and under the wrong class. A directory whose real path is in `visited` (shared across the classes
    of a folder) is not listed again, which ends loops outside the folder too. Symlinked files are listed as
    they are.
    """
    found: list[tuple[str, list[str]]] = []
    for dirpath, dirs, files in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        keep = []
        for d in dirs:
            sub = os.path.join(dirpath, d)
            if os.path.islink(sub):
                target = os.path.realpath(sub)
                if target in visited or any(_inside(target, f) or _inside(f, target) for f in no_follow):
                    continue
            keep.append(d)
        dirs[:] = keep
        found.append((dirpath, sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))))
    # Sorted by folder path, as earlier versions listed them, so sample indices (and seeded crops) do not change.
    return [os.path.join(dirpath, f) for dirpath, names in sorted(found) for f in names]


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>``: classes are the sorted sub-folder names, samples the image files beneath them.

    ``transform(image, index, epoch)`` maps a PIL image to a tensor; it gets the sample index and epoch so that
    random augmentations can be seeded per sample, making them independent of worker count, rank and resumption.
    Item `i` is ``(tensor, class index)``, or an ``Unreadable`` marker for a file that cannot be decoded.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, mode: str = "RGB",
                 classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; pass a folder laid out as "
                                    "<folder>/<class name>/<image files> (ImageNet style)")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if classes is None:
            classes = found
        elif set(found) - set(classes):
            raise ValueError(f"{self.root} has class folders {sorted(set(found) - set(classes))} that the training "
                             "folder does not have")
        if not classes:
            raise ValueError(f"{self.root} has no class sub-folders; lay it out as <folder>/<class>/<image files>")
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        visited: set[str] = set()
        reals = {c: os.path.realpath(self.root / c) for c in self.classes}
        aliases = [c for c in self.classes if list(reals.values()).count(reals[c]) > 1]
        if aliases:  # the same images under two labels: no answer is right
            raise ValueError(f"class folders {aliases} of {self.root} are links to the same folder; keep one of "
                             "them, or give each class its own folder")
        no_follow = [os.path.realpath(self.root), *reals.values()]
        for c in self.classes:
            d = self.root / c
            if d.is_dir():
                self.samples += [(p, self.class_to_idx[c]) for p in scan_images(d, no_follow, visited)]
        if not self.samples:
            raise ValueError(f"{self.root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.mode = mode
        self.epoch = 0
        self.skipped: set[str] = set()  # in this process only (each loader worker has its own copy)

    @property
    def num_skipped(self) -> int:
        """Unreadable images met so far in this process; FolderBatches counts across its loader workers."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = open_image(path, self.mode)
        except (ValueError, FileNotFoundError) as e:
            self.skipped.add(path)
            return Unreadable(path, str(e))
        x = self.transform(image, index, self.epoch) if self.transform is not None else image
        return x, target
