"""Segmentation on image files. Prediction runs one image at a time at its own size (or its short side resized to
``img_size``, multiples of 32, as the ADE20K protocol), and writes for ``<name>.<ext>``:

* ``<name>_mask.png``: the predicted class of every pixel, at the image's size, as a palette PNG: its pixel values
  are the class indices and its palette the fixed colours of ``seg_palette`` (class 0 black, then the Pascal VOC
  colour map), so it reads back as labels (``np.array(Image.open(p))``) and shows in colour;
* ``<name>_overlay.png``: the image blended half and half with the mask's colours (RGB).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .._io import atomic_write, check_output
from ..data import DataConfig, open_image
from ..data.seg_transforms import SegEvalTransform
from ..data.transforms import pil_to_uint8
from .inputs import model_input
from .seg_metrics import main_logits, upsample_logits

__all__ = ["seg_palette", "segment_images", "output_paths", "write_png"]


def seg_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the Pascal VOC colour map (class 0 black, 1 dark red, 2 dark green, ...), the
    bits of the class index spread over the high bits of R, G and B; distinct for up to 2**24 classes."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for i in range(num_classes):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        palette[i] = rgb
    return palette


def write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda t: image.save(t, format="PNG"))


def output_paths(images: list, output_dir: Path, overwrite: bool = False,
                 suffixes: tuple[str, ...] = ("_mask.png", "_overlay.png")) -> list[tuple[Path, ...]]:
    """Each image's output paths (``<stem><suffix>`` in `output_dir`, one per suffix), checked before any work: no
    two images share a name, no output lands on an input image (not even with `overwrite`: it may not have been
    read yet), and no existing file is replaced unless `overwrite`."""
    check_output(output_dir, folder=True)
    stems = [Path(p).stem for p in images]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise ValueError(f"several images are named {dup!r}; their outputs would overwrite each other in "
                         f"{output_dir}: predict them in separate calls with separate --output-dir")
    names = [tuple(output_dir / f"{s}{suffix}" for suffix in suffixes) for s in stems]
    inputs = {os.path.realpath(p) for p in images}
    for out in (o for paths in names for o in paths):
        if os.path.realpath(out) in inputs:
            raise FileExistsError(f"{out} is one of the input images; predict into another --output-dir")
        check_output(out, overwrite=overwrite)
    return names


@torch.no_grad()
def segment_images(net: nn.Module, images: list[str | os.PathLike], output_dir: str | os.PathLike,
                   data_cfg: DataConfig, class_names: list[str], img_size: int | None = None,
                   alpha: float = 0.5, overwrite: bool = False) -> Iterator[dict]:
    """For each image file, in order: its mask and overlay PNGs written (see the module docstring) and
    {"image", "mask", "overlay", "size": [H, W], "classes": {name: share of pixels}} (largest share first)."""
    output_dir = Path(output_dir).expanduser()
    names = output_paths(images, output_dir, overwrite)
    dev = next(net.parameters()).device
    view = SegEvalTransform(short_side=img_size)
    palette = seg_palette(len(class_names))
    mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
    for path, (mask_path, overlay_path) in zip(images, names):
        x = pil_to_uint8(open_image(path, mode))  # a bad file raises, naming it
        logits = main_logits(net(model_input(view(x, None)[0][None], data_cfg, dev)))
        labels = upsample_logits(logits.float(), x.shape[-2:]).argmax(1)[0].cpu().numpy()
        labels = labels.astype(np.uint8 if len(palette) <= 256 else np.int64)
        colour = palette[labels]
        if len(palette) <= 256:  # indices and colours in one file
            mask = Image.fromarray(labels)  # "L"; putpalette makes it "P"
            mask.putpalette(palette.flatten().tolist())
        else:
            mask = Image.fromarray(colour)
        rgb = x.expand(3, -1, -1).permute(1, 2, 0).numpy().astype(np.float32)
        overlay = np.rint((1 - alpha) * rgb + alpha * colour).astype(np.uint8)
        write_png(mask_path, mask)
        write_png(overlay_path, Image.fromarray(overlay))
        counts = np.bincount(labels.ravel(), minlength=len(class_names)) / labels.size
        order = np.argsort(-counts, kind="stable")
        yield {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "size": list(labels.shape),
               "classes": {class_names[i]: round(float(counts[i]), 6) for i in order if counts[i] > 0}}
