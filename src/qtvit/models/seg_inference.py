"""Full-resolution predictions of any segmentation model: logits upsampled to the image (or a given size), with
optional sliding windows (mmsegmentation's "slide" mode) and flip averaging. Model-agnostic: anything that maps
images to logits at some stride."""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn as nn

from .._utils import parse_size
from ..layers.resize import resize_to

__all__ = ["flip_average", "predict_full"]


def flip_average(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The mean of ``run(images)`` and the mirrored ``run`` of the mirror images (the flip test)."""
    return (run(images) + run(images.flip(-1)).flip(-1)) / 2


def _windows(n: int, window: int, step: int) -> list[int]:
    """Window starts along a side of n: every ``step``, the last one flush with the end (one window if n fits)."""
    count = max(n - window + step - 1, 0) // step + 1
    return sorted({max(min(i * step, n - window), 0) for i in range(count)})


def _sliding(model: nn.Module, images: torch.Tensor, window: tuple[int, int], overlap: float,
             mode: str) -> torch.Tensor:
    (h, w), (wh, ww) = images.shape[-2:], window
    sh, sw = max(1, round(wh * (1 - overlap))), max(1, round(ww * (1 - overlap)))
    total, count = None, images.new_zeros(1, 1, h, w)
    for y in _windows(h, wh, sh):
        for x in _windows(w, ww, sw):
            crop = images[..., y:y + wh, x:x + ww]
            logits = resize_to(model(crop), crop.shape[-2:], mode)
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], h, w)
            total[..., y:y + wh, x:x + ww] += logits
            count[..., y:y + wh, x:x + ww] += 1
    return total / count


@torch.no_grad()
def predict_full(
    model: nn.Module,
    images: torch.Tensor,
    *,
    size: Union[int, Sequence[int], None] = None,
    sliding_window: Union[int, Sequence[int], None] = None,
    overlap: float = 1 / 3,
    flip: bool = False,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Full-resolution class scores of a segmentation model: logits (B, C, H, W); ``.argmax(1)`` is the label map.

    Args:
        model: a model returning logits at some stride (put it in eval mode first).
        images: (B, C, H, W), normalised as the model expects.
        size: output (H, W) (e.g. the label map's size when the images were resized); default the images' size.
        sliding_window: None runs the whole image; a window side or (h, w) runs overlapping crops (each upsampled
            to its crop) and averages the logits where windows overlap (mmsegmentation's "slide" mode).
        overlap: fraction of a window shared with the next one (1/3: stride 2/3 of the window).
        flip: also run the horizontally flipped images and average the two.
        mode: interpolation of the logits, "bilinear" (default) or "bicubic" (mit-han-lab's evaluation).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    out = parse_size(size) if size is not None else tuple(images.shape[-2:])
    window = parse_size(sliding_window) if sliding_window is not None else None

    def run(x: torch.Tensor) -> torch.Tensor:
        if window is None:
            return resize_to(model(x), out, mode)
        return resize_to(_sliding(model, x, window, overlap, mode), out, mode)

    return flip_average(run, images) if flip else run(images)
