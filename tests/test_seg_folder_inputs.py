"""Folders of image/mask pairs (issue 27): symlinked sub-folders are followed as in classification folders, a bad
mask met in a loader worker is one clean error, and a mask over the pixel limit gets advice that works."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from qtvit.data.seg_folders import folder_pairs, open_mask
from qtvit.data import Shard
from qtvit.data.segmentation import build_segmentation_batches, open_segmentation


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pairs(root, names, value=0):
    for name in names:
        _save(root / "images" / f"{name}.png", np.zeros((6, 8, 3), np.uint8))
        _save(root / "masks" / f"{name}.png", np.full((6, 8), value, np.uint8))


def test_symlinked_sub_folders_are_followed(tmp_path):
    split, elsewhere = tmp_path / "train", tmp_path / "elsewhere"
    _pairs(split, ["a", "b", "sub/c", "sub/d"])
    _pairs(elsewhere, ["e", "f", "g", "h"])
    for kind in ("images", "masks"):
        os.symlink(elsewhere / kind, split / kind / "linked")
        os.symlink(split / kind, split / kind / "sub" / "loop")  # back into the folder: not listed twice
    pairs = folder_pairs(split)
    assert len(pairs) == 8
    rel = [os.path.relpath(i, split / "images") for i, _ in pairs]
    assert rel == ["a.png", "b.png", "linked/e.png", "linked/f.png", "linked/g.png", "linked/h.png", "sub/c.png",
                   "sub/d.png"]
    assert all(os.path.relpath(m, split / "masks") == r for (_, m), r in zip(pairs, rel))


def test_a_bad_mask_in_a_loader_worker_is_one_clean_error(tmp_path):
    _pairs(tmp_path / "val", ["a", "b"], value=7)  # 7 is outside the 3 classes
    info = open_segmentation(tmp_path, num_classes=3)
    batches = build_segmentation_batches(info, train=False, crop_size=8, batch_size=1, shard=Shard(workers=1))
    with pytest.raises(ValueError) as e:
        next(iter(batches.iterate(0)))
    message = str(e.value)
    assert message.startswith("mask ") and "holds label values [7]" in message
    assert "Traceback" not in message and "worker" not in message and len(message.splitlines()) == 1


def test_mask_over_the_pixel_limit_names_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the limit set below ends with the test
    _save(tmp_path / "m.png", np.zeros((100, 100), np.uint8))
    monkeypatch.setenv("QTVIT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ValueError) as e:
        open_mask(tmp_path / "m.png")
    message = str(e.value)
    assert "mask " in message and "10,000 pixels, over the limit of 1,000" in message
    assert "QTVIT_MAX_IMAGE_PIXELS=10000" in message and "8-bit PNG" not in message
    monkeypatch.setenv("QTVIT_MAX_IMAGE_PIXELS", "10000")  # the advice works
    assert open_mask(tmp_path / "m.png").shape == (100, 100)
