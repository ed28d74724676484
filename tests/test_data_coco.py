"""The COCO-format reader on tiny generated files: COCO 2017's layout and a plain folder, polygons, RLE (compressed
and not), crowd regions, an image without objects, non-contiguous category ids, JPEG and PNG; and each bad record
(box outside its image, unknown category, broken polygon, broken RLE, missing or mis-sized file) -> its error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_api  # noqa: E402

from qtvit.data.coco import CocoDetection, CocoFormatError, find_coco  # noqa: E402

H, W = 24, 32
CATS = [dict(id=90, name="toothbrush"), dict(id=3, name="car"), dict(id=17, name="cat")]


def _rle_of(box_mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(box_mask.astype(np.uint8)))
    return dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))


def _uncompressed_rle(m: np.ndarray) -> dict:
    flat, counts, value, run = m.T.reshape(-1), [], 0, 0  # column-major runs, starting with zeros
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return dict(size=[int(m.shape[0]), int(m.shape[1])], counts=counts)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco_dict() -> dict:
    images = [dict(id=7, file_name="a.jpg", height=H, width=W), dict(id=2, file_name="b.png", height=H, width=W),
              dict(id=5, file_name="empty.png", height=H, width=W)]
    anns = [
        dict(id=11, image_id=7, category_id=17, bbox=[2, 3, 8, 5], area=40, iscrowd=0,
             segmentation=[[2, 3, 10, 3, 10, 8, 2, 8]]),  # a polygon: pixels x 2..9, y 3..7
        dict(id=12, image_id=7, category_id=90, bbox=[12, 0, 20, 24], area=480, iscrowd=0,
             segmentation=_rle_of(_rect(12, 0, 32, 24))),  # compressed RLE, touching the image's edges
        dict(id=13, image_id=2, category_id=3, bbox=[0, 10, 5, 4], area=20, iscrowd=0,
             segmentation=[[0, 10, 5, 10, 5, 14, 0, 14], [20, 20, 22, 20, 22, 22]]),  # two polygons
        dict(id=14, image_id=2, category_id=3, bbox=[10, 10, 10, 10], area=100, iscrowd=1,
             segmentation=_uncompressed_rle(_rect(10, 10, 20, 20))),  # a crowd region: uncompressed RLE
        dict(id=15, image_id=2, category_id=17, bbox=[4, 4, 0, 3], area=0, iscrowd=0,
             segmentation=[[4, 4, 4, 4, 4, 7]]),  # zero width: dropped as torchvision's reader does
    ]
    return dict(images=images, annotations=anns, categories=CATS)


def _write(folder: Path, data: dict, name: str = "ann.json", image_dir: Path | None = None) -> Path:
    image_dir = image_dir or folder
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for im in data["images"]:
        Image.fromarray(rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)).save(
            image_dir / im["file_name"])
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_reads_polygons_rle_crowd_empty_images_and_sparse_category_ids(tmp_path):
    ann = _write(tmp_path, _coco_dict())
    ds = CocoDetection(*find_coco(tmp_path))
    assert ds.cat_ids == [3, 17, 90] and ds.categories == ["car", "cat", "toothbrush"] and ds.num_classes == 4
    assert [im["id"] for im in ds.images] == [2, 5, 7] and len(ds) == 3
    image, t = ds[2]  # image 7 (JPEG)
    assert image.shape == (3, H, W) and image.dtype == torch.uint8 and t["image_id"] == 7
    assert t["labels"].tolist() == [2, 3]  # cat (17) -> 2, toothbrush (90) -> 3
    assert t["boxes"].tolist() == [[2, 3, 10, 8], [12, 0, 32, 24]]
    assert torch.equal(t["masks"][0], torch.from_numpy(_rect(2, 3, 10, 8)))
    assert torch.equal(t["masks"][1], torch.from_numpy(_rect(12, 0, 32, 24)))
    _, t = ds[0]  # image 2 (PNG): the crowd region and the zero-width box stay out; two polygons make one mask
    assert t["labels"].tolist() == [1] and t["boxes"].tolist() == [[0, 10, 5, 14]]
    m = t["masks"][0]
    assert torch.equal(m[:16], torch.from_numpy(_rect(0, 10, 5, 14))[:16])  # the rectangle, and the triangle apart
    assert m[16:].sum() == m[20:23, 20:23].sum() >= 1
    image, t = ds[1]  # the image without objects
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, H, W)
    assert ann == find_coco(ann)[0]
    boxes_only = CocoDetection(ann, tmp_path, masks=False)
    assert "masks" not in boxes_only.target(2) and torch.equal(boxes_only.target(2)["boxes"], ds.target(2)["boxes"])


def test_finds_coco_2017_and_plain_folders(tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "val"):
        _write(root, _coco_dict(), f"annotations/instances_{split}2017.json", root / f"{split}2017")
    assert find_coco(root, "train") == (root / "annotations/instances_train2017.json", root / "train2017")
    ds = CocoDetection(*find_coco(root, "val"))
    assert len(ds) == 3 and ds[0][0].shape == (3, H, W)
    plain = tmp_path / "plain"
    _write(plain, _coco_dict(), "labels.json", plain / "images")
    assert find_coco(plain) == (plain / "labels.json", plain / "images")
    assert len(CocoDetection(*find_coco(plain))) == 3
    (plain / "other.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="exactly one COCO-format .json.*labels.json, other.json"):
        find_coco(plain)
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        find_coco(tmp_path / "nothing")


def _broken(data: dict, ann_id: int, **change) -> dict:
    for a in data["annotations"]:
        if a["id"] == ann_id:
            a.update(change)
    return data


@pytest.mark.parametrize("change, message", [
    (dict(bbox=[20, 3, 20, 5]), r"annotation 11: box \[20, 3, 20, 5\] lies outside its image 7 \(32 x 24\)"),
    (dict(bbox=[-3, 3, 8, 5]), r"annotation 11: box .* lies outside its image 7"),
    (dict(category_id=4), r"annotation 11 has the unknown category 4 \(the file's categories: \[3, 17, 90\]\)"),
    (dict(segmentation=[[2, 3, 10, 3, 10]]), r"annotation 11 has a broken polygon"),
    (dict(segmentation=[[2, 3, 10, 3]]), r"annotation 11 has a broken polygon"),
    (dict(segmentation=[[2, 3, "x", 3, 10, 8]]), r"annotation 11 has a broken polygon"),
    (dict(segmentation=dict(size=[H, W + 1], counts="abc")), r"annotation 11 has a broken RLE.*\[24, 32\] of image 7"),
    (dict(segmentation=dict(size=[H, W], counts=[3, 4])), r"annotation 11: its RLE counts cover 7 pixels"),
    (dict(segmentation=[]), r"annotation 11 has no segmentation.*masks=False"),
    (dict(bbox=[1, 2, 3]), r"annotation 11 has a broken bbox"),
    (dict(image_id=99), r"annotation 11 refers to image 99"),
])
def test_bad_annotations_name_the_file_and_the_annotation(tmp_path, change, message):
    ann = _write(tmp_path, _broken(_coco_dict(), 11, **change))
    with pytest.raises(CocoFormatError, match=message) as e:
        CocoDetection(ann, tmp_path)
    assert str(ann) in str(e.value)


def test_bad_images_and_files_name_the_file(tmp_path):
    ann = _write(tmp_path, _coco_dict())
    (tmp_path / "b.png").unlink()
    with pytest.raises(CocoFormatError, match=r"ann.json: image 2: file .*b.png is missing"):
        CocoDetection(ann, tmp_path)
    ann = _write(tmp_path, _coco_dict())
    Image.new("RGB", (W, H + 1)).save(tmp_path / "a.jpg")
    ds = CocoDetection(ann, tmp_path)
    with pytest.raises(CocoFormatError, match=r"image 7: .*a.jpg is 32 x 25, its record says 32 x 24"):
        ds[2]
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(CocoFormatError, match=r"image 7: cannot read .*a.jpg"):
        ds[2]
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="ann.json: not a readable JSON file"):
        CocoDetection(ann, tmp_path)
    (tmp_path / "ann.json").write_text(json.dumps(dict(images=[])))
    with pytest.raises(CocoFormatError, match="needs 'images' and 'categories' lists"):
        CocoDetection(ann, tmp_path)


def test_training_transform_keeps_boxes_masks_and_labels_together(tmp_path):
    pytest.importorskip("torchvision")
    from qtvit.data.det_transforms import detection_transform
    _write(tmp_path, _coco_dict())
    torch.manual_seed(0)
    ds = CocoDetection(*find_coco(tmp_path), transform=detection_transform(True, 48, scale=(1.5, 2.0), flip=1.0))
    image, t = ds[2]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) == len(t["area"]) == len(t["iscrowd"])
    for m, box in zip(t["masks"].bool(), t["boxes"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box[0] - 1 <= xs.min() and xs.max() < box[2] + 1 and box[1] - 1 <= ys.min() and ys.max() < box[3] + 1
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 48, 48)


def test_a_json_under_annotations_finds_the_images_above(tmp_path):
    _write(tmp_path, _coco_dict(), "annotations/mine.json", tmp_path / "images")
    assert find_coco(tmp_path / "annotations" / "mine.json") == (tmp_path / "annotations/mine.json",
                                                                 tmp_path / "images")
    assert find_coco(tmp_path) == (tmp_path / "annotations/mine.json", tmp_path / "images")
