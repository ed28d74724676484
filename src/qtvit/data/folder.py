"""ImageNet-style image folders (``root/<class>/<image>``), decoded with PIL; no torchvision.

An image that cannot be read or decoded is skipped and counted (``dataset.num_skipped``), never fatal: the loader
returns the next readable image in its place, so batches keep their size and order stays deterministic.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "open_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode one image file into a PIL image of `mode` ("RGB" or "L"); a clear ValueError if it is not an image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e}); pass a JPEG, PNG, BMP, GIF, "
                         "TIFF or WebP file") from e


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>``: classes are the sorted sub-folder names, samples the image files beneath them.

    ``transform(image, index, epoch)`` maps a PIL image to a tensor; it gets the sample index and epoch so that
    random augmentations can be seeded per sample, making them independent of worker count, rank and resumption.
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
        for c in self.classes:
            d = self.root / c
            if not d.is_dir():
                continue
            for dirpath, _, files in sorted(os.walk(d, followlinks=True)):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise ValueError(f"{self.root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.mode = mode
        self.epoch = 0
        self.skipped: set[str] = set()  # per process (each loader worker has its own); see num_skipped

    @property
    def num_skipped(self) -> int:
        """Unreadable images met so far in this process."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            path, target = self.samples[i]
            try:
                image = open_image(path, self.mode)
            except (ValueError, FileNotFoundError) as e:
                if path not in self.skipped:
                    self.skipped.add(path)
                    warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
                continue
            x = self.transform(image, index, self.epoch) if self.transform is not None else image
            # Returning the skip flag lets the main process count skips made inside loader workers.
            return x, target, attempt
        raise ValueError(f"no image under {self.root} could be read")
