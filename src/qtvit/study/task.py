"""The kernel study's task, **pointer canvases**: which garment does the marker point to?

A canvas is ``size`` x ``size`` grey pixels (default 64: 16 x 16 = 256 tokens at the study net's stride 4) cut into
2 x 2 cells. Every cell holds one Fashion-MNIST garment, scaled to 16..24 px (bilinear), placed at random in the
cell but never in its outer corner (the ``corner`` x ``corner`` px at the canvas corner). One cell's outer corner
carries a marker, a bright ``marker`` x ``marker`` square: the label is the Fashion-MNIST class of the garment in
the cell **diagonally opposite** the marker. Backgrounds are a random grey level plus Gaussian pixel noise.

Why attention must decide: the marker and the garment it points to are at least ``size/2 - corner`` px apart
along both axes (27 px at 64), and each alone says nothing about the label: the garment is one of four, and the
marker is a blank square. A network whose token mixing is local (the study's attention-free control: stem and
depthwise convolutions reach 11.5 px around a token) followed by a mean over tokens and a linear head sums what
each neighbourhood saw: it can tell which four classes are present, and where the marker is, but not combine the
two (the label is their product, not their sum). So the control is left with guessing among the four garments,
while one attention layer can carry the marker's position to the garment's tokens (or the garment's class to the
marker's). Classes are drawn independently per cell, so a class repeated in another cell does not give the answer
away more than chance.

Canvases are made once, all at once, from ``numpy.random.default_rng([seed, split])`` (training canvases from the
training images, test canvases from the test images) and kept as one uint8 tensor: the same on every run of a
study, and cheap (about 1 s for 10 000 canvases).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PointerSpec", "make_pointer_canvases", "opposite_cell"]

_SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class PointerSpec:
    """The canvases' settings (see the module docstring)."""
    size: int = 64
    item_px: tuple[int, int] = (16, 24)
    corner: int = 6  # the outer corner of every cell kept free of garments
    marker: int = 4  # the marker's side, 1 px in from the canvas corner
    background: tuple[int, int] = (0, 60)  # grey level range of the canvas
    noise: float = 8.0  # std of the per-pixel Gaussian noise

    def __post_init__(self):
        half, (lo, hi) = self.size // 2, self.item_px
        if self.size % 2 or not 8 <= lo <= hi <= half - self.corner:
            raise ValueError(f"pointer canvas settings {self}: need an even size and 8 <= item_px[0] <= item_px[1] "
                             f"<= size/2 - corner ({half - self.corner}) so that a garment fits its cell beside "
                             "the marker's corner")
        if not 1 <= self.marker <= self.corner - 1:
            raise ValueError(f"pointer canvas settings {self}: the marker ({self.marker} px) must fit in the "
                             f"corner ({self.corner} px) with a 1 px margin")


def opposite_cell(cell: int) -> int:
    """Cells are numbered row by row (0 1 / 2 3); the diagonally opposite one of (r, c) is (1 - r, 1 - c)."""
    return 3 - cell


def _place(rng: np.random.Generator, n: int, spec: PointerSpec, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left (y, x) of each cell's garment, (n, 4, 2): offset >= corner from the cell's outer edges."""
    half = spec.size // 2
    # offset from the cell's outer edge (the canvas border side) along each axis, then mirrored into place
    offset = rng.integers(spec.corner, half - sizes[..., None] + 1, size=(n, 4, 2))
    rows, cols = np.divmod(np.arange(4), 2)
    outer = np.stack([rows, cols], axis=-1)  # (4, 2): 0 = the cell's outer edge is at 0, 1 = at size
    return np.where(outer == 0, offset, spec.size - offset - sizes[..., None]), outer


def make_pointer_canvases(images: torch.Tensor, labels: torch.Tensor, n: int, *, split: str = "train", seed: int = 0,
                          spec: PointerSpec = PointerSpec()) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` canvases from Fashion-MNIST ``images`` (uint8 (M, 28, 28)) and ``labels`` of one split.

    Returns uint8 canvases (n, 1, size, size) and int64 labels (n,): the class of the garment opposite the marker.
    """
    if split not in _SPLITS:
        raise ValueError(f"pointer canvas split {split!r}: use 'train' or 'test'")
    if n < 1 or images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) < 1:
        raise ValueError(f"pointer canvases need n >= 1 ({n}) and Fashion-MNIST images (M, 28, 28) with one label "
                         f"each (got {tuple(images.shape)} and {tuple(labels.shape)})")
    rng = np.random.default_rng([seed, _SPLITS[split]])
    sources = rng.integers(len(images), size=(n, 4))
    sizes = rng.integers(spec.item_px[0], spec.item_px[1] + 1, size=(n, 4))
    (tops, outer), target = _place(rng, n, spec, sizes), rng.integers(4, size=n)
    base = rng.uniform(*spec.background, size=(n, 1, 1))
    canvas = base + rng.normal(0.0, spec.noise, size=(n, spec.size, spec.size))
    items = images.float()[torch.as_tensor(sources.reshape(-1))][:, None]  # (n*4, 1, 28, 28)
    flat_sizes = sizes.reshape(-1)
    for s in np.unique(flat_sizes):  # one resize per garment size
        idx = np.nonzero(flat_sizes == s)[0]
        scaled = F.interpolate(items[torch.as_tensor(idx)], size=(int(s), int(s)), mode="bilinear",
                               align_corners=False, antialias=True)[:, 0].numpy()
        for j, patch in zip(idx, scaled):
            i, cell = divmod(int(j), 4)
            y, x = tops[i, cell]
            region = canvas[i, y:y + s, x:x + s]
            np.maximum(region, patch, out=region)  # the garment over the background, as light on dark
    m = spec.marker
    for i, cell in enumerate(opposite_cell(target)):
        ry, rx = outer[cell]
        y = 1 if ry == 0 else spec.size - 1 - m
        x = 1 if rx == 0 else spec.size - 1 - m
        canvas[i, y:y + m, x:x + m] = 255.0
    canvas = torch.from_numpy(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))[:, None]
    y = torch.as_tensor(labels)[torch.as_tensor(sources[np.arange(n), target])].long()
    return canvas, y
