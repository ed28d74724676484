"""Detection on image files. Each image runs alone at its own size (the detector resizes it as in its training, or
its short side to ``img_size``), and for ``<name>.<ext>`` the output folder gets:

* ``<name>_detections.png``: the image with the detections scoring at least ``score_threshold`` drawn over it
  (torchvision's ``draw_segmentation_masks`` and ``draw_bounding_boxes``): each mask blended in its class's colour
  (``seg_palette``, the colours of the segmentation masks), each box outlined with its class name and score;
* ``detections.json``, once every image is done: all detections of all images (up to the detector's
  ``box_detections_per_img``, whatever their score) in COCO's results format (``det_metrics.coco_results``), with
  the category ids of the dataset the model was trained on (recorded with its weights) and as ``image_id`` the
  number a file name is (COCO's ``000000397133.jpg`` is image 397133) when every name is one, else the image's
  position in the list (1, 2, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from PIL import Image

from .._io import check_output
from ..data import open_image
from ..data.transforms import pil_to_uint8
from .det_metrics import coco_results, write_coco_results
from .seg_predict import output_paths, seg_palette, write_png

__all__ = ["detect_images", "draw_detections", "image_ids", "RESULTS_FILE", "SCORE_THRESHOLD"]

RESULTS_FILE = "detections.json"
SCORE_THRESHOLD = 0.5  # drawn and listed; the results json keeps every detection (COCO's evaluation ranks them)


def image_ids(images: list) -> list[int]:
    """The results' image ids: the file names' numbers when every name is one (COCO's), else 1, 2, ..."""
    stems = [Path(p).stem for p in images]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(images) + 1))


def draw_detections(image: torch.Tensor, det: dict, class_names: list[str], palette=None) -> torch.Tensor:
    """uint8 (3, H, W) `image` with `det`'s objects drawn over it: each mask (a detector's (N, 1, H, W)
    probabilities, or a target's binary (N, H, W)) blended in its class's colour (``seg_palette``), each box
    outlined in it with the class name, and the score when `det` has ``scores`` (detections; ground truth has none)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    palette = seg_palette(len(class_names)) if palette is None else palette
    labels = det["labels"].tolist()
    if not labels:
        return image
    colours = [tuple(int(c) for c in palette[k]) for k in labels]
    if "masks" in det:
        masks = det["masks"][:, 0] if det["masks"].dim() == 4 else det["masks"]
        image = draw_segmentation_masks(image, masks > 0.5, alpha=0.5, colors=colours)
    words = [class_names[k] for k in labels]
    if "scores" in det:
        words = [f"{w} {s:.2f}" for w, s in zip(words, det["scores"].tolist())]
    # class 0's colour (black) is never drawn: the detectors' labels start at 1
    return draw_bounding_boxes(image, det["boxes"], labels=words, colors=colours, width=2)


@torch.no_grad()
def detect_images(net: nn.Module, images: list[str | os.PathLike], output_dir: str | os.PathLike,
                  class_names: list[str], cat_ids: list[int], score_threshold: float = SCORE_THRESHOLD,
                  overwrite: bool = False) -> Iterator[dict]:
    """For each image file, in order: its drawing written (see the module docstring) and {"image", "image_id",
    "drawn", "results", "detections": [{"class", "category_id", "score", "box": [x1, y1, x2, y2]}, ...]} (those
    drawn, best first); the results json is written after the last image."""
    output_dir = Path(output_dir).expanduser()
    drawn_paths = output_paths(images, output_dir, overwrite, suffixes=("_detections.png",))
    results_path = check_output(output_dir / RESULTS_FILE, overwrite=overwrite)
    dev = next(net.parameters()).device
    palette = seg_palette(len(class_names))
    results = []
    for path, (drawn_path,), image_id in zip(images, drawn_paths, image_ids(images)):
        x = pil_to_uint8(open_image(path, "RGB"))  # a bad file raises, naming it
        det = {k: v.float().cpu() if v.is_floating_point() else v.cpu()
               for k, v in net([x.to(dev).float().div_(255)])[0].items()}
        results += coco_results({image_id: det}, cat_ids)
        keep = det["scores"] >= score_threshold
        shown = {k: v[keep] for k, v in det.items()}
        drawn = draw_detections(x, shown, class_names, palette)
        write_png(drawn_path, Image.fromarray(drawn.permute(1, 2, 0).numpy()))
        yield {"image": str(path), "image_id": image_id, "drawn": str(drawn_path), "results": str(results_path),
               "detections": [{"class": class_names[k], "category_id": int(cat_ids[k - 1]), "score": round(s, 4),
                               "box": [round(v, 2) for v in b]}
                              for k, s, b in zip(shown["labels"].tolist(), shown["scores"].tolist(),
                                                 shown["boxes"].tolist())]}
    write_coco_results(results_path, results)
