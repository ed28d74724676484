"""Segmentation datasets on disk: ADE20K, Cityscapes and a generic folder of image/mask pairs.

Every dataset gives the model's labels: class indices 0..K-1 and 255 for "ignore" (``IGNORE_INDEX``), as int64.

* **ADE20K** (``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``ADEChallengeData2016/annotations/{training,validation}/*.png``): 150 classes. An annotation holds 0 for
  "unlabelled" and 1..150 for the classes; as mmseg's ``reduce_zero_label`` does, 0 becomes 255 (ignore) and every
  class shifts by -1, so the model's classes are 0..149 (255 in a file, which mmseg also maps to ignore, stays 255).
* **Cityscapes** (``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``): the labelIds 0..33 map to the 19 trainIds of
  cityscapesScripts' ``labels.py`` (``CITYSCAPES_LABEL_TO_TRAIN``); every other labelId becomes 255.
* **A folder of pairs** (``<split>/images/<stem>.<ext>`` and ``<split>/masks/<stem>.png``, sub-folders allowed and
  symlinked ones followed, the same relative stem in both): mask values are the class indices 0..K-1 (K from
  ``classes.txt``, one class name a line, or a ``num_classes`` argument), 255 is ignore.

A mask is an index image, read as stored (a palette PNG gives its indices, not its colours): 8-bit (L, P) or 16-bit
greyscale, lossless (PNG, BMP, TIFF, GIF, PPM/PGM). A missing mask, a mask in a lossy or colour format, a mask whose
size differs from its image, and a label value outside the dataset's classes (other than ignore) end in an error
naming the file and what to do; a mask is never guessed. An image that cannot be decoded is skipped and counted as
for classification folders (an ``Unreadable`` marker; see folder.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .folder import Unreadable, scan_images
from .images import max_image_pixels, open_image, too_many_pixels
from .transforms import pil_to_uint8

__all__ = ["IGNORE_INDEX", "ADE20K_NUM_CLASSES", "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_TO_TRAIN",
           "LabelMap", "open_mask", "ade20k_pairs", "cityscapes_pairs", "folder_pairs", "read_classes_file",
           "SegmentationFolder"]

IGNORE_INDEX = 255
ADE20K_NUM_CLASSES = 150
ADE20K_CLASSES = tuple(n.replace("_", " ") for n in """
wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table mountain
plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock
wardrobe lamp bathtub railing cushion base box column signboard chest_of_drawers counter sand sink skyscraper
fireplace refrigerator grandstand path stairs runway case pool_table pillow screen_door stairway river bridge
bookcase blind coffee_table toilet flower book hill bench countertop stove palm kitchen_island computer
swivel_chair boat bar arcade_machine hovel bus towel light truck tower chandelier awning streetlight booth
television_receiver airplane dirt_track apparel pole land bannister escalator ottoman bottle buffet poster stage
van ship fountain conveyer_belt canopy washer plaything swimming_pool stool barrel basket waterfall tent bag
minibike cradle oven ball food step tank trade_name microwave pot animal bicycle lake dishwasher screen blanket
sculpture hood sconce vase traffic_light tray ashcan fan pier crt_screen plate monitor bulletin_board shower
radiator glass clock flag
""".split())  # label order (the official list)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
# cityscapesScripts helpers/labels.py: labelId -> trainId for the 19 evaluated classes; every other labelId of
# 0..33 (unlabeled, ego vehicle, ..., parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer)
# has trainId 255. License plate (labelId -1) never occurs in a labelIds file.
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
MASK_FORMATS = ("PNG", "BMP", "TIFF", "GIF", "PPM")
_INVALID = -1


class LabelMap:
    """Stored mask values -> the model's labels through a lookup table; a value the table has no label for is an
    error naming the file (`what` says which values the dataset's masks may hold)."""

    def __init__(self, table: np.ndarray, what: str):
        self.table, self.what = table.astype(np.int64), what

    @classmethod
    def ade20k(cls) -> "LabelMap":
        t = np.full(256, _INVALID)
        t[1:ADE20K_NUM_CLASSES + 1] = np.arange(ADE20K_NUM_CLASSES)
        t[0] = t[255] = IGNORE_INDEX
        return cls(t, "ADE20K annotations hold 0 (unlabelled) and the classes 1..150")

    @classmethod
    def cityscapes(cls) -> "LabelMap":
        t = np.full(34, IGNORE_INDEX)
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
            t[label_id] = train_id
        return cls(t, "Cityscapes *_gtFine_labelIds.png files hold the labelIds 0..33")

    @classmethod
    def identity(cls, num_classes: int) -> "LabelMap":
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(f"{num_classes} classes: a segmentation folder has 1 to 255 classes (mask values "
                             "0..K-1, 255 = ignore)")
        t = np.full(256, _INVALID)
        t[:num_classes] = np.arange(num_classes)
        t[IGNORE_INDEX] = IGNORE_INDEX
        return cls(t, f"masks of this folder hold the classes 0..{num_classes - 1} and 255 (ignore)")

    def __call__(self, raw: np.ndarray, path) -> np.ndarray:
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.table)):
            bad = np.unique(raw[(raw < 0) | (raw >= len(self.table))])
        else:
            out = self.table[raw]
            if not (out == _INVALID).any():
                return out
            bad = np.unique(raw[out == _INVALID])
        raise ValueError(f"mask {path} holds label values {bad[:8].tolist()} outside the dataset's classes; "
                         f"{self.what}. Fix or remove that mask (or, for a folder, list every class in classes.txt)")


def open_mask(path: str | os.PathLike) -> np.ndarray:
    """The stored index values of a mask file as an integer array (H, W). ValueError naming the file when it is not
    a lossless single-channel image (a JPEG or an RGB mask cannot hold exact class indices)."""
    path = Path(path)
    max_image_pixels()  # applies QTVIT_MAX_IMAGE_PIXELS, as for images
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=MASK_FORMATS) as im:
                im.load()
                mode = im.mode
                raw = np.asarray(im) if mode in ("L", "P", "I", "1") or mode.startswith("I;16") else None
    except FileNotFoundError:
        raise FileNotFoundError(f"mask {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(path, e, "mask ") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad data; all mean "not a mask"
        raise ValueError(f"mask {path} is not a readable lossless image ({type(e).__name__}: {e}); save masks as "
                         "8-bit PNG files of class indices") from e
    if raw is None:
        raise ValueError(f"mask {path} is a {mode} image; a mask holds one class index per pixel: save it as an "
                         "8-bit greyscale (L) or palette (P) PNG of class indices, not as colours")
    return raw.astype(np.int64)


def _pairs(images: list[Path], mask_of: Callable[[Path], Path], layout: str) -> list[tuple[str, str]]:
    pairs = []
    for image in images:
        mask = mask_of(image)
        if not mask.is_file():
            raise FileNotFoundError(f"image {image} has no mask: {mask} does not exist ({layout}); add the mask or "
                                    "remove the image")
        pairs.append((str(image), str(mask)))
    if not pairs:
        raise ValueError(f"no images found ({layout})")
    return pairs


def ade20k_pairs(root: str | os.PathLike, split: str) -> list[tuple[str, str]]:
    """(image, annotation) paths of an ADE20K split ("training" or "validation"; "train"/"val" accepted); `root`
    is ``ADEChallengeData2016`` or the folder holding it."""
    root = Path(root)
    root = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    split = {"train": "training", "val": "validation"}.get(split, split)
    folder = root / "images" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass the ADE20K folder ADEChallengeData2016 (with "
                                "images/{training,validation} and annotations/{training,validation})")
    layout = f"ADE20K layout: {root}/annotations/{split}/<stem>.png beside each images/{split}/<stem>.jpg"
    return _pairs(sorted(folder.glob("*.jpg")), lambda p: root / "annotations" / split / (p.stem + ".png"), layout)


def cityscapes_pairs(root: str | os.PathLike, split: str) -> list[tuple[str, str]]:
    """(image, labelIds) paths of a Cityscapes split ("train", "val" or "test"), cities in sorted order."""
    root = Path(root)
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass the Cityscapes folder holding "
                                "leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/")
    images = sorted(folder.glob("*/*_leftImg8bit.png"))

    def mask_of(p: Path) -> Path:
        return root / "gtFine" / split / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    layout = f"Cityscapes layout: gtFine/{split}/<city>/<name>_gtFine_labelIds.png for each leftImg8bit image"
    return _pairs(images, mask_of, layout)


def _files(folder: Path) -> list[Path]:
    """The image files under `folder` in path order, symlinked sub-folders followed as for classification folders
    (``scan_images``: links back into the folder are not listed twice)."""
    return sorted(map(Path, scan_images(folder, [os.path.realpath(folder)], set())))


def folder_pairs(split_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(image, mask) paths of ``split_dir/images`` and ``split_dir/masks``, matched by relative path without the
    extension (``images/a/b.jpg`` with ``masks/a/b.png``)."""
    split_dir = Path(split_dir)
    img_dir, mask_dir = split_dir / "images", split_dir / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist; a segmentation folder holds images/ and masks/ with one "
                                    "mask per image under the same name (masks as PNG)")
    masks: dict[Path, list[Path]] = {}
    for m in _files(mask_dir):
        masks.setdefault(m.relative_to(mask_dir).with_suffix(""), []).append(m)
    images = _files(img_dir)

    def mask_of(p: Path) -> Path:
        found = masks.get(p.relative_to(img_dir).with_suffix(""), [])
        if len(found) > 1:
            raise ValueError(f"image {p} has several masks {[str(f) for f in found]}; keep one")
        if found and found[0].suffix.lower() in (".jpg", ".jpeg", ".webp"):
            raise ValueError(f"mask {found[0]} is a lossy {found[0].suffix} file, whose compression changes class "
                             "indices; save masks as PNG")
        return found[0] if found else mask_dir / p.relative_to(img_dir).with_suffix(".png")
    return _pairs(images, mask_of, f"folder layout: {mask_dir}/<same name>.png for each image of {img_dir}")


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Class names of a ``classes.txt``: one a line, in label order; blank lines and ``#`` comments skipped."""
    names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names or len(names) > IGNORE_INDEX:
        raise ValueError(f"{path} lists {len(names)} classes; list 1 to 255 class names, one a line, in the order "
                         "of their mask values 0, 1, ...")
    if len(set(names)) != len(names):
        raise ValueError(f"{path} lists a class name twice; each line names one class of mask value = line index")
    return names


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, mask) pairs decoded per item: ``(uint8 image (C, H, W), int64 labels (H, W))`` after
    ``transform(image, labels, index, epoch)`` (seeded per sample, see seg_transforms.py), or an ``Unreadable``
    marker for an image that cannot be decoded. Mask errors are raised (see the module docstring)."""

    def __init__(self, pairs: list[tuple[str, str]], label_map: LabelMap, transform: Callable | None = None,
                 mode: str = "RGB"):
        self.samples, self.label_map, self.transform, self.mode = list(pairs), label_map, transform, mode
        self.epoch = 0
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, index: int, width: int, height: int) -> torch.Tensor:
        image_path, mask_path = self.samples[index]
        raw = open_mask(mask_path)
        if raw.shape != (height, width):
            raise ValueError(f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} pixels but its image {image_path} "
                             f"is {width}x{height}; a mask needs one label per image pixel: export it at the "
                             "image's size (nearest-neighbour) or pair each image with its own mask")
        return torch.from_numpy(self.label_map(raw, mask_path))

    def __getitem__(self, index: int):
        image_path = self.samples[index][0]
        try:
            image = open_image(image_path, self.mode)
        except (ValueError, FileNotFoundError) as e:  # skipped and counted, as in classification folders
            self.skipped.add(image_path)
            return Unreadable(image_path, str(e))
        labels = self._labels(index, image.width, image.height)  # a bad mask is an error, never skipped
        x = pil_to_uint8(image)
        if self.transform is not None:
            return self.transform(x, labels, index, self.epoch)
        return x, labels
