"""COCO-format detection data: COCO 2017's layout, or any folder with a COCO-format json.

``find_coco(root, split)`` locates the annotation file and the image folder:

- COCO 2017: ``root/annotations/instances_{train,val}2017.json`` with images in ``root/{train,val}2017/``;
- any folder with one COCO-format json (in it or in its ``annotations/``; several: name the file), the images'
  ``file_name`` relative to its ``images/`` if it has one, else to the folder; or the json file itself.

``CocoDetection(ann_file, image_dir)`` reads it (``json``: a file is data, never code) and checks every record
once, up front, so a bad file fails at once and by name: a box outside its image, an unknown category, a broken
polygon or RLE, an image file that is missing or of another size than its record says are each a
``CocoFormatError`` naming the file and the annotation (or image) id. Item ``i`` is ``(uint8 image (3, H, W),
target)`` in torchvision's detection format: ``boxes`` float (N, 4) xyxy, ``labels`` int64 (N,) contiguous 1..K in
the order of the category ids (COCO's ids 1..90 with gaps become 1..80; ``cat_ids[k - 1]`` maps back),
``masks`` uint8 (N, H, W) decoded from polygons or RLE (with ``masks=True``), ``area``, ``iscrowd`` and
``image_id``. Crowd regions (``iscrowd=1``) are not objects to learn: they stay out of the target, and COCOeval,
which reads the json itself, ignores detections on them. Images without objects are kept (an empty target).
Zero-width or zero-height boxes are dropped, as torchvision's and mmdetection's COCO readers do.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

__all__ = ["CocoDetection", "CocoFormatError", "find_coco"]

_BOX_SLACK = 1.0  # px: COCO's own boxes overshoot their image by rounding, never by more


class CocoFormatError(ValueError):
    """A COCO-format file that cannot be read as one; the message names the file and the record."""


def _mask_api():
    try:
        from pycocotools import mask
    except ImportError as e:
        raise ImportError("COCO masks need pycocotools: pip install 'qtvit[detect]'") from e
    return mask


def find_coco(root: str | os.PathLike, split: str = "val") -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of a COCO 2017 tree or of a folder with one COCO-format json."""
    root = Path(root)
    if root.is_file():
        return root, _image_dir(root.parent.parent if root.parent.name == "annotations" else root.parent)
    coco2017 = root / "annotations" / f"instances_{split}2017.json"
    if coco2017.is_file():
        return coco2017, root / f"{split}2017"
    jsons = sorted(root.glob("*.json")) or sorted((root / "annotations").glob("*.json"))
    if len(jsons) != 1:
        found = ", ".join(p.name for p in jsons) or "none"
        raise FileNotFoundError(f"{root}: no COCO data found: expected annotations/instances_{split}2017.json "
                                f"(COCO 2017) or exactly one COCO-format .json in the folder or its annotations/ "
                                f"(found: {found}); pass the json file itself to choose")
    return jsons[0], _image_dir(root)


def _image_dir(root: Path) -> Path:
    return root / "images" if (root / "images").is_dir() else root


def _fail(path: Path, what: str, fix: str = "fix or remove that record") -> CocoFormatError:
    return CocoFormatError(f"{path}: {what}; {fix}")


def _check_polygons(path: Path, ann_id: Any, segmentation: list) -> None:
    for poly in segmentation:
        ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and \
            all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly)
        if not ok:
            raise _fail(path, f"annotation {ann_id} has a broken polygon ({str(poly)[:60]}): a polygon is a list of "
                              "at least 3 x, y pairs of finite numbers")


def _check_segmentation(path: Path, ann: dict, image: dict) -> None:
    seg, ann_id = ann.get("segmentation"), ann["id"]
    if isinstance(seg, list) and seg:
        return _check_polygons(path, ann_id, seg)
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        if not isinstance(counts, (str, list)) or size != [image["height"], image["width"]]:
            raise _fail(path, f"annotation {ann_id} has a broken RLE (counts {type(counts).__name__}, size {size}): "
                              f"RLE needs counts (a string or a list) and size [height, width] = "
                              f"[{image['height']}, {image['width']}] of image {image['id']}")
        if isinstance(counts, list) and sum(counts) != image["height"] * image["width"]:
            raise _fail(path, f"annotation {ann_id}: its RLE counts cover {sum(counts)} pixels, image {image['id']} "
                              f"has {image['height'] * image['width']}")
        return None
    raise _fail(path, f"annotation {ann_id} has no segmentation (polygons or RLE) but masks were asked for",
                "read the file with masks=False for boxes only, or add the segmentation")


def _check_annotation(path: Path, ann: dict, images: dict, categories: dict, masks: bool) -> None:
    ann_id = ann.get("id", "?")
    image = images.get(ann.get("image_id"))
    if image is None:
        raise _fail(path, f"annotation {ann_id} refers to image {ann.get('image_id')!r}, which the file lists not")
    if ann.get("category_id") not in categories:
        raise _fail(path, f"annotation {ann_id} has the unknown category {ann.get('category_id')!r} (the file's "
                          f"categories: {sorted(categories)})")
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                          for v in box)) or box[2] < 0 or box[3] < 0:
        raise _fail(path, f"annotation {ann_id} has a broken bbox {box!r}: COCO boxes are [x, y, width, height] "
                          "with width, height >= 0")
    x, y, w, h = box
    if x < -_BOX_SLACK or y < -_BOX_SLACK or x + w > image["width"] + _BOX_SLACK or \
            y + h > image["height"] + _BOX_SLACK:
        raise _fail(path, f"annotation {ann_id}: box {box} lies outside its image {image['id']} "
                          f"({image['width']} x {image['height']})")
    if masks or ann.get("iscrowd", 0):
        _check_segmentation(path, ann, image)


def _check_image(path: Path, image: Any, image_dir: Path) -> None:
    keys = ("id", "file_name", "height", "width")
    if not isinstance(image, dict) or any(k not in image for k in keys):
        raise _fail(path, f"image record {str(image)[:80]} lacks one of {keys}")
    if not (image_dir / image["file_name"]).is_file():
        raise _fail(path, f"image {image['id']}: file {image_dir / image['file_name']} is missing",
                    "put the image there or remove its record")


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format annotation file and its images (see the module docstring); ``coco`` is the json as read,
    ``cat_ids`` the category ids in label order, ``categories`` their names."""

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, masks: bool = True,
                 transform: Callable | None = None):
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.masks, self.transform = masks, transform
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CocoFormatError(f"{self.ann_file}: not a readable JSON file ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise _fail(self.ann_file, "not a COCO-format file: it needs 'images' and 'categories' lists",
                        "use a COCO instances json (annotations/instances_val2017.json is one)")
        data.setdefault("annotations", [])
        self.coco = data
        cats = {c["id"]: c for c in data["categories"]}
        self.cat_ids = sorted(cats)
        self.categories = [cats[i].get("name", str(i)) for i in self.cat_ids]
        self._label = {cid: k + 1 for k, cid in enumerate(self.cat_ids)}
        for image in data["images"]:
            _check_image(self.ann_file, image, self.image_dir)
        self.images = sorted(data["images"], key=lambda im: im["id"])
        by_id = {im["id"]: im for im in self.images}
        self._anns: dict[Any, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            _check_annotation(self.ann_file, ann, by_id, cats, masks)
            self._anns[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Categories + 1 (the background): the detectors' ``num_classes``."""
        return len(self.cat_ids) + 1

    def load_image(self, record: dict) -> torch.Tensor:
        path = self.image_dir / record["file_name"]
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise _fail(self.ann_file, f"image {record['id']}: cannot read {path} ({e})") from e
        if image.shape[:2] != (record["height"], record["width"]):
            raise _fail(self.ann_file, f"image {record['id']}: {path} is {image.shape[1]} x {image.shape[0]}, its "
                                       f"record says {record['width']} x {record['height']}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1)

    def _decode(self, ann: dict, h: int, w: int) -> np.ndarray:
        mask_api = _mask_api()
        seg = ann["segmentation"]
        try:
            if isinstance(seg, list):
                rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                rle = mask_api.frPyObjects(seg, h, w)
            else:
                rle = dict(seg, counts=seg["counts"].encode("ascii"))
            return mask_api.decode(rle)
        except (ValueError, TypeError, UnicodeEncodeError) as e:  # pycocotools' own complaint, with our names
            raise _fail(self.ann_file, f"annotation {ann['id']}: its segmentation does not decode ({e})") from e

    def target(self, i: int) -> dict[str, Any]:
        """The target of image ``i`` without loading the image (see the module docstring)."""
        record = self.images[i]
        h, w = record["height"], record["width"]
        anns = [a for a in self._anns.get(record["id"], []) if not a.get("iscrowd", 0) and a["bbox"][2] > 0
                and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target = dict(boxes=boxes, labels=torch.tensor([self._label[a["category_id"]] for a in anns],
                                                       dtype=torch.int64),
                      area=torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
                      iscrowd=torch.zeros(len(anns), dtype=torch.int64), image_id=record["id"])
        if self.masks:
            masks = [self._decode(a, h, w) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8))
        return target

    def __getitem__(self, i: int):
        image, target = self.load_image(self.images[i]), self.target(i)
        return self.transform(image, target) if self.transform is not None else (image, target)
