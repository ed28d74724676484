"""The kernel study's task, **pointer canvases**: which garment does the marker point to?

A canvas is ``size`` x ``size`` grey pixels (default 64: 16 x 16 = 256 tokens at the study net's stride 4) cut into
2 x 2 cells, each holding one Fashion-MNIST garment, scaled to 20..26 px (bilinear) and placed uniformly anywhere in
its cell except over the cell's outer ``corner`` x ``corner`` square. The four garments are of four distinct classes
drawn from six told apart at a glance (T-shirt/top, Trouser, Dress, Sandal, Bag, Ankle boot: recognising garments is
not what the study is about). One cell is **marked** by a bright ``marker`` x ``marker`` square in its outer corner
(on the canvas corner), drawn over whatever is there. **The label is the class of the garment in the cell diagonally
opposite the marker** (6 classes, chance 1/6). Backgrounds are a random grey level plus Gaussian pixel noise.

Why attention must decide: a token of the study's attention-free control sees ``CONTROL_VIEW`` = 23 px along each
axis (the stem and two depthwise convolutions), and the marker is small enough (``marker <= size/2 - 22``) that the
tokens that see it see nothing outside the marked cell. So they know where the marker is and the class X of the
garment beside it, which is not the label. Every other token sees garments whose places and classes are distributed
alike in every cell, the marked one included: nothing of where the marker is. The control's mean over tokens into a
linear head adds up this evidence: it can tell the four classes present and exclude X, and no more
(``tests/test_study.py::test_an_additive_readout_cannot_beat_one_third``: even knowing X, the marked cell and the
whole arrangement, a sum of one term per source of knowledge stays at 1/3), while one attention layer can carry the
marker's place to the garments' tokens. So the control's ceiling is **1/3**. The classes present already narrow the
label to four (1/4), which rewards recognising garments from the first steps: with four classes all present in every
canvas nothing did, and softmax mostly stayed at chance for 24 epochs (docs/kernel_study.md).

Earlier versions (``marked_cell="empty"``) left the marked cell empty but for the marker, three garments in the
other cells. In the first (``placement="inner"``) the garments kept ``corner`` px from their cell's outer edges, so
every garment sat within 0..6 px of the canvas's centre lines, and a control token near the centre saw the empty
marked quadrant beside the target garment: the empty quadrant stood in for the marker (``control_view_leak``). The
second (``placement="spread"``) spread the garments over their cells, which held the control at 35 % for 8 epochs
but not for 24 (56 %): an empty region near a token still tells it which cell is likely the marked one. Filling the
marked cell (the third version, ``marked_cell="garment"``, default) removes the sign; it does not change what
attention has to do.

Canvases are made once, all at once, from ``numpy.random.default_rng([seed, split])`` (training and validation
canvases from disjoint parts of the training images, test canvases from the test images: ``kernels.make_data``) and
kept as one uint8 tensor: the same on every run of a study, and cheap (about 1 s for 10 000 canvases).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PointerSpec", "PointerLayout", "make_pointer_canvases", "pointer_layout", "marker_slices", "opposite_cell",
           "control_view_leak"]

_SPLITS = {"train": 0, "test": 1, "val": 2}
PLACEMENTS = ("spread", "inner")
MARKED_CELLS = ("garment", "empty")
CONTROL_VIEW = 23  # px a token of the study's control sees along each axis (stem and two depthwise 3x3 convolutions)


@dataclass(frozen=True)
class PointerSpec:
    """The canvases' settings (see the module docstring)."""
    size: int = 64
    item_px: tuple[int, int] = (20, 26)
    # T-shirt/top, Trouser, Dress, Sandal, Bag, Ankle boot: told apart at a glance; four of them per canvas, so that
    # recognising garments pays from the first steps (the classes present narrow the label), as the pointer needs
    classes: tuple[int, ...] = (0, 1, 3, 5, 8, 9)
    corner: int = 6  # "spread": a garment never covers its cell's outer corner x corner square; "inner": the
    # garment keeps corner px from both outer edges
    placement: str = "spread"  # garments anywhere in their cell; "inner": the first version's, near the centre lines
    marked_cell: str = "garment"  # the marked cell holds a garment too; "empty": the first and second versions'
    marker: int = 10  # side of the marker square in the marked cell's outer corner
    background: tuple[int, int] = (0, 60)  # grey level range of the canvas
    noise: float = 8.0  # std of the per-pixel Gaussian noise

    def __post_init__(self):
        half, (lo, hi) = self.size // 2, self.item_px
        if self.placement not in PLACEMENTS:
            raise ValueError(f"pointer canvas placement {self.placement!r}: use one of {', '.join(PLACEMENTS)}")
        if self.marked_cell not in MARKED_CELLS:
            raise ValueError(f"pointer canvas marked_cell {self.marked_cell!r}: use one of {', '.join(MARKED_CELLS)}")
        if self.size % 2 or not 8 <= lo <= hi <= half - self.corner:
            raise ValueError(f"pointer canvas settings {self}: need an even size and 8 <= item_px[0] <= item_px[1] "
                             f"<= size/2 - corner ({half - self.corner}) so that a garment fits its cell beside "
                             "the marker's corner")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 4 or \
                not set(self.classes) <= set(range(10)):
            raise ValueError(f"pointer canvas classes {self.classes}: need at least 4 distinct Fashion-MNIST classes "
                             "(0..9), one per cell")
        if not 1 <= self.marker <= self.size // 2 - CONTROL_VIEW + 1:
            raise ValueError(f"pointer canvas settings {self}: a control token that sees the marker ({self.marker} px) "
                             f"sees {CONTROL_VIEW} px and must not reach another cell "
                             f"(marker <= size/2 - {CONTROL_VIEW - 1} = {self.size // 2 - CONTROL_VIEW + 1})")


def opposite_cell(cell: int) -> int:
    """Cells are numbered row by row (0 1 / 2 3); the diagonally opposite one of (r, c) is (1 - r, 1 - c)."""
    return 3 - cell


def marker_slices(spec: PointerSpec, cell: int) -> list[tuple[slice, slice]]:
    """The marker of ``cell`` as (rows, cols): a ``marker`` x ``marker`` square in the cell's outer corner (on the
    canvas corner)."""
    m, s = spec.marker, spec.size
    r, c = divmod(cell, 2)
    return [(slice(0, m) if r == 0 else slice(s - m, s), slice(0, m) if c == 0 else slice(s - m, s))]


def _offsets(rng: np.random.Generator, spec: PointerSpec, sizes: np.ndarray) -> np.ndarray:
    """Each garment's offset (n, 4, 2) from its cell's outer edges (the canvas border side), along y and x."""
    half = spec.size // 2
    if spec.placement == "inner":  # the first task version: at least ``corner`` px from both outer edges
        return rng.integers(spec.corner, half - sizes[..., None] + 1, size=(*sizes.shape, 2))
    offset = rng.integers(0, half - sizes[..., None] + 1, size=(*sizes.shape, 2))
    while True:  # anywhere in the cell except over its outer corner's corner x corner square: redraw those
        bad = (offset < spec.corner).all(axis=-1)
        if not bad.any():
            return offset
        offset[bad] = rng.integers(0, half - sizes[bad][:, None] + 1, size=(int(bad.sum()), 2))


def _place(rng: np.random.Generator, n: int, spec: PointerSpec, sizes: np.ndarray) -> np.ndarray:
    """Top-left (y, x) of each cell's garment, (n, 4, 2), from its offset to the cell's outer edges."""
    offset = _offsets(rng, spec, sizes)
    rows, cols = np.divmod(np.arange(4), 2)
    outer = np.stack([rows, cols], axis=-1)  # (4, 2): 0 = the cell's outer edge is at 0, 1 = at size
    return np.where(outer == 0, offset, spec.size - offset - sizes[..., None])


@dataclass
class PointerLayout:
    """Where everything of ``n`` canvases is: class index per cell (n, 4), garment sizes (n, 4) and top-left corners
    (n, 4, 2), the target cell (n,) and the marked cell (n,), opposite the target."""
    classes: np.ndarray
    sizes: np.ndarray
    tops: np.ndarray
    target: np.ndarray
    marked: np.ndarray
    picks: np.ndarray  # (n, 4) random draws that choose each garment's image among its class's


def pointer_layout(n: int, *, split: str = "train", seed: int = 0, spec: PointerSpec = PointerSpec(),
                   rng: np.random.Generator | None = None) -> PointerLayout:
    """The layout of ``n`` canvases, drawn as ``make_pointer_canvases`` draws it (no images needed)."""
    if split not in _SPLITS:
        raise ValueError(f"pointer canvas split {split!r}: use one of {', '.join(_SPLITS)}")
    rng = np.random.default_rng([seed, _SPLITS[split]]) if rng is None else rng
    k = len(spec.classes)
    # distinct classes in a canvas: a local network's best guess among the garments not beside the marker is 1/3
    cls = np.stack([rng.permutation(k)[:4] for _ in range(n)])  # (n, 4) class indices, one per cell
    picks = rng.integers(1 << 62, size=(n, 4))
    sizes = rng.integers(spec.item_px[0], spec.item_px[1] + 1, size=(n, 4))
    tops, target = _place(rng, n, spec, sizes), rng.integers(4, size=n)
    return PointerLayout(cls, sizes, tops, target, opposite_cell(target), picks)


def make_pointer_canvases(images: torch.Tensor, labels: torch.Tensor, n: int, *, split: str = "train", seed: int = 0,
                          spec: PointerSpec = PointerSpec()) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` canvases from Fashion-MNIST ``images`` (uint8 (M, 28, 28)) and ``labels`` of one split.

    Returns uint8 canvases (n, 1, size, size) and int64 labels (n,): the class of the garment opposite the marker,
    as its index among ``sorted(spec.classes)``.
    """
    if split not in _SPLITS:
        raise ValueError(f"pointer canvas split {split!r}: use one of {', '.join(_SPLITS)}")
    if n < 1 or images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) < 1:
        raise ValueError(f"pointer canvases need n >= 1 ({n}) and Fashion-MNIST images (M, 28, 28) with one label "
                         f"each (got {tuple(images.shape)} and {tuple(labels.shape)})")
    lab = torch.as_tensor(labels).numpy()
    classes = np.sort(np.asarray(spec.classes))
    pools = [np.nonzero(lab == c)[0] for c in classes]
    if any(len(p) == 0 for p in pools):
        raise ValueError(f"pointer canvases need images of every class {tuple(classes)}; some have none among the "
                         f"{len(lab)} given")
    rng = np.random.default_rng([seed, _SPLITS[split]])
    lay = pointer_layout(n, spec=spec, rng=rng)
    sources = np.vectorize(lambda c, r: pools[c][r % len(pools[c])])(lay.classes, lay.picks)
    sizes, tops, target, marked, cls = lay.sizes, lay.tops, lay.target, lay.marked, lay.classes
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
            if cell == marked[i] and spec.marked_cell == "empty":
                continue
            y, x = tops[i, cell]
            region = canvas[i, y:y + s, x:x + s]
            np.maximum(region, patch, out=region)  # the garment over the background, as light on dark
    for i, cell in enumerate(marked):
        for rows, cols in marker_slices(spec, cell):
            canvas[i, rows, cols] = 255.0
    canvas = torch.from_numpy(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))[:, None]
    return canvas, torch.as_tensor(cls[np.arange(n), target], dtype=torch.int64)


def control_view_leak(layout: PointerLayout, spec: PointerSpec = PointerSpec(), *, stride: int = 4, reach: int = 11,
                      garment_frac: float = 0.25, cell_px: int = 64) -> dict[str, float]:
    """How often one token of the attention-free control sees both ends of the pointer, from the layout's boxes.

    A control token at grid position t sees pixels 4t - 11 .. 4t + 11 on each axis (the stride-4 stem and two
    depthwise 3x3 convolutions; ``test_control_has_the_attention_budget_and_mixes_no_tokens``). It "sees" a garment
    when its window covers ``garment_frac`` of the garment's box, and the marked cell when it covers ``cell_px``
    pixels of it (room for a garment to be missing). Returns the fraction of canvases where some token sees the target
    garment and the marked cell (``target_and_marked``), and where it also sees the other two garments
    (``all_and_marked``: the empty cell then tells that token the label). Boxes, not garment pixels: an upper bound.
    """
    n, half = len(layout.target), spec.size // 2
    lo = np.arange(spec.size // stride) * stride - reach
    hi = lo + 2 * reach + 1

    def cover(start: np.ndarray, length: np.ndarray | int) -> np.ndarray:  # 1-D overlap of [start, start + length)
        return np.clip(np.minimum(start[..., None] + np.asarray(length)[..., None], hi) -
                       np.maximum(start[..., None], lo), 0, None)

    sizes = layout.sizes
    area = cover(layout.tops[..., 0], sizes)[..., :, None] * cover(layout.tops[..., 1], sizes)[..., None, :]
    sees = area >= garment_frac * (sizes * sizes)[..., None, None]  # (n, 4, T, T)
    r, c = np.divmod(layout.marked, 2)
    marked = cover(r * half, half)[:, :, None] * cover(c * half, half)[:, None, :] >= cell_px  # (n, T, T)
    rows = np.arange(n)
    both = sees[rows, layout.target] & marked
    sides = np.where(np.isin(layout.target, (0, 3))[:, None], [1, 2], [0, 3])  # the two cells beside the marker
    every = both & sees[rows, sides[:, 0]] & sees[rows, sides[:, 1]]
    return {"target_and_marked": float(both.any(axis=(1, 2)).mean()),
            "all_and_marked": float(every.any(axis=(1, 2)).mean())}
