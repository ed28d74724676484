"""Segmentation readers on tiny files in each official layout (ADE20K, Cityscapes, a folder of pairs), their label
mappings and bad masks, the joint training augmentation, the official evaluation protocol against an independent
re-implementation of EfficientViT's eval script, and the batch iterators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from qtvit.data.seg_folders import LabelMap, SegmentationFolder, Unreadable, folder_pairs, open_mask
from qtvit.data.seg_transforms import SegBatchAugment, SegEvalTransform, SegTrainTransform, eval_size
from qtvit.data import Shard
from qtvit.data.segmentation import build_segmentation_batches, open_segmentation


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def ade(tmp_path):
    """ADEChallengeData2016 with two training and two validation images (one landscape, one portrait)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ade" / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i, (h, w) in enumerate([(40, 60), (50, 30)]):
            _save(root / "images" / split / f"ADE_{split}_{i}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            mask = rng.integers(0, 151, (h, w)).astype(np.uint8)
            mask[:5, :5] = 0
            _save(root / "annotations" / split / f"ADE_{split}_{i}.png", mask)
    return tmp_path / "ade"


# labelId -> trainId, written out from cityscapesScripts' helpers/labels.py (name, id, trainId columns).
CITYSCAPES_TABLE = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9,
                    10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]


@pytest.fixture()
def cityscapes(tmp_path):
    rng, tmp_path = np.random.default_rng(1), tmp_path / "cityscapes"
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        for city in cities:
            stem = f"{city}_000000_000019"
            _save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                  rng.integers(0, 256, (24, 48, 3), dtype=np.uint8))
            ids = np.resize(np.arange(34, dtype=np.uint8), (24, 48))
            _save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    return tmp_path


def test_ade20k_labels_shift_by_one_with_0_ignored(ade):
    info = open_segmentation(ade)
    assert (info.kind, info.num_classes, info.eval_short_side) == ("ade20k", 150, 512)
    assert info.classes[:3] == ["wall", "building", "sky"] and info.classes[44] == "chest of drawers"
    assert info.classes[-1] == "flag" and len(set(info.classes)) == 150
    b = build_segmentation_batches(info, train=False, crop_size=64, batch_size=1, shard=Shard(workers=0))
    assert len(b) == 2
    raw = np.asarray(Image.open(ade / "ADEChallengeData2016/annotations/validation/ADE_validation_0.png"))
    _, labels = next(iter(b.iterate(0)))
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert labels.dtype == torch.int64 and np.array_equal(labels[0].numpy(), expected)
    assert labels[0, :5, :5].eq(255).all() and (labels[labels != 255] < 150).all()


def test_cityscapes_label_ids_map_to_the_19_train_ids(cityscapes):
    info = open_segmentation(cityscapes)
    assert (info.kind, info.num_classes, info.eval_size) == ("cityscapes", 19, (1024, 2048))
    b = build_segmentation_batches(info, train=False, crop_size=64, batch_size=1, eval_size=(24, 48),
                                   shard=Shard(workers=0))
    x, labels = next(iter(b.iterate(0)))
    assert x.shape == (1, 3, 24, 48)
    ids = np.resize(np.arange(34), (24, 48))
    assert np.array_equal(labels[0].numpy(), np.asarray(CITYSCAPES_TABLE)[ids])
    train = build_segmentation_batches(info, train=True, crop_size=16, batch_size=2, shard=Shard(workers=0))
    assert [p.split("/")[-2] for p, _ in train.dataset.samples] == ["aachen", "bremen"]


def test_folder_of_pairs_reads_palette_indices_and_needs_its_classes(tmp_path):
    for split in ("train", "val"):
        _save(tmp_path / split / "images" / "sub" / "a.jpg", np.full((8, 10, 3), 90, np.uint8))
        m = Image.frombytes("P", (10, 8), np.array([[0, 1, 2, 255] * 2 + [1, 1]] * 8, np.uint8).tobytes())
        m.putpalette([200, 10, 10] * 256)  # colours say nothing: the indices are the labels
        (tmp_path / split / "masks" / "sub").mkdir(parents=True)
        m.save(tmp_path / split / "masks" / "sub" / "a.png")
    with pytest.raises(ValueError, match="classes.txt"):
        open_segmentation(tmp_path)
    info = open_segmentation(tmp_path, num_classes=3)
    assert info.classes == ["0", "1", "2"]
    (tmp_path / "classes.txt").write_text("# names\nsky\ntree\nroad\n")
    info = open_segmentation(tmp_path)
    assert (info.kind, info.classes) == ("folder", ["sky", "tree", "road"])
    with pytest.raises(ValueError, match="lists 3 classes, not num_classes=4"):
        open_segmentation(tmp_path, num_classes=4)
    x, labels = next(iter(build_segmentation_batches(info, train=False, crop_size=8, batch_size=1,
                                                     shard=Shard(workers=0)).iterate(0)))
    assert labels[0, 0].tolist() == [0, 1, 2, 255, 0, 1, 2, 255, 1, 1]
    with pytest.raises(ValueError, match=r"holds label values \[2\].*classes.txt"):
        SegmentationFolder(folder_pairs(tmp_path / "val"), LabelMap.identity(2))[0]


def test_bad_masks_are_errors_naming_the_file(tmp_path):
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    _save(img_dir / "a.png", np.zeros((6, 8, 3), np.uint8))
    _save(img_dir / "b.png", np.zeros((6, 8, 3), np.uint8))
    _save(mask_dir / "a.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"image .*b.png has no mask: .*masks/b.png does not exist"):
        folder_pairs(tmp_path)
    _save(mask_dir / "b.png", np.zeros((5, 8), np.uint8))  # one row short
    ds = SegmentationFolder(folder_pairs(tmp_path), LabelMap.identity(4))
    assert ds[0][1].shape == (6, 8)
    with pytest.raises(ValueError, match=r"mask .*b.png is 8x5 pixels but its image .*b.png is 8x6"):
        ds[1]
    _save(mask_dir / "b.png", np.full((6, 8), 7, np.uint8))
    with pytest.raises(ValueError, match=r"mask .*b.png holds label values \[7\] outside the dataset's classes"):
        ds[1]
    _save(mask_dir / "b.png", np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*b.png is a RGB image; a mask holds one class index per pixel"):
        ds[1]
    (mask_dir / "b.png").unlink()
    _save(mask_dir / "b.jpg", np.zeros((6, 8), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*b.jpg is a lossy .jpg file"):
        folder_pairs(tmp_path)
    (mask_dir / "b.jpg").write_bytes(b"not a png")
    (mask_dir / "b.jpg").rename(mask_dir / "b.png")
    with pytest.raises(ValueError, match=r"mask .*b.png is not a readable lossless image"):
        open_mask(mask_dir / "b.png")
    with pytest.raises(ValueError, match=r"ADE20K annotations hold 0 \(unlabelled\) and the classes 1..150"):
        LabelMap.ade20k()(np.array([[151]]), "x.png")


def test_an_unreadable_image_is_skipped_not_its_mask(tmp_path):
    _save(tmp_path / "masks" / "a.png", np.zeros((6, 8), np.uint8))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG broken")
    item = SegmentationFolder(folder_pairs(tmp_path), LabelMap.identity(2))[0]
    assert isinstance(item, Unreadable) and item.path.endswith("a.png")


def _mmseg_crop_box(labels, crop, cat_max_ratio, rng):
    """mmseg's RandomCrop box as written there: up to 10 draws, each box tested for the class ratio."""
    h, w = labels.shape
    ch, cw = min(crop, h), min(crop, w)
    for _ in range(10):
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        c = labels[top:top + ch, left:left + cw]
        counts = torch.bincount(c[c != 255].flatten())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return top, left, ch, cw


@pytest.mark.parametrize("crop", [16, 24, 40])
def test_crop_box_draws_as_mmseg_and_tests_a_whole_image_crop_once(crop, monkeypatch):
    # Mostly one class (the ratio test fails for most boxes) and a small second one; a 24 crop of the 24 x 24 labels
    # is the whole image (one box, tested once instead of ten times), 40 is larger than the image. The boxes and the
    # draws after them (the flip) must be mmseg's exactly.
    import random
    labels = torch.zeros(24, 24, dtype=torch.int64)
    labels[2:6, 3:7] = 1
    labels[20:, 20:] = 255
    bincount, tests = torch.bincount, []
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: tests.append(1) or bincount(*a, **k))
    for seed in range(20):
        tf = SegTrainTransform(crop, cat_max_ratio=0.75)
        ours, ref = random.Random(seed), random.Random(seed)
        tests.clear()
        box = tf._crop_box(labels, ours)
        ours_tests = len(tests)
        assert box == _mmseg_crop_box(labels, crop, 0.75, ref)
        assert ours.random() == ref.random()
        if crop >= 24:  # one possible box: one test, where mmseg's loop ran all ten (the box never passes)
            assert ours_tests == 1 and len(tests) == 1 + 10
        else:
            assert ours_tests == len(tests) - ours_tests


def test_joint_augmentation_keeps_image_and_mask_aligned():
    # Labels in 12 x 12 blocks; the image's first channel encodes the label (20 x label), so any misalignment of
    # scale, crop, flip or padding between image and mask shows as a wrong value inside a block.
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (6, 8), generator=g).repeat_interleave(12, 0).repeat_interleave(12, 1)
    image = torch.stack([labels * 20, torch.full_like(labels, 7), labels * 3]).to(torch.uint8)
    tf = SegTrainTransform(48, ratio_range=(0.5, 2.0), cat_max_ratio=0.75, seed=3)
    for index in range(12):
        x, y = tf(image, labels, index, epoch=0)
        assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and y.shape == (48, 48) and y.dtype == torch.int64
        pad = y == 255
        assert x[:, pad].eq(0).all()  # padding: image 0 and mask ignore together
        inner = ~pad  # pixels 2 away from any label edge: bilinear resizing leaves their value exact
        for d in (1, 2, -1, -2):
            inner &= (y == torch.roll(y, d, 0)) & (y == torch.roll(y, d, 1))
        inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
        assert inner.sum() > 50
        assert (x[0][inner].long() - 20 * y[inner]).abs().max() <= 1
        x2, y2 = tf(image, labels, index, epoch=0)
        assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded by (seed, epoch, index)
    assert not torch.equal(tf(image, labels, 0, 0)[1], tf(image, labels, 0, 1)[1])
    # The same draws with and without the flip: the flip turns image and mask together.
    on, off = (SegTrainTransform(48, hflip=p, seed=3)(image, labels, 4, 0) for p in (1.0, 0.0))
    assert torch.equal(on[0], off[0].flip(-1)) and torch.equal(on[1], off[1].flip(-1))
    with pytest.raises(ValueError, match="scale ratio range"):
        SegTrainTransform(48, ratio_range=(2.0, 0.5))


def _keys_cubic_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_CUBIC) written out: Keys' kernel a = -0.75 on
    half-pixel centres, edge pixels replicated, rounded and saturated to uint8 (no antialiasing)."""
    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = (o + 0.5) * n_in / n_out - 0.5
            x0 = math.floor(src)
            for k in range(x0 - 1, x0 + 3):
                d = abs(src - k)
                wgt = (1.25 * d - 2.25) * d * d + 1 if d <= 1 else ((-0.75 * d + 3.75) * d - 6) * d + 3
                m[o, min(max(k, 0), n_in - 1)] += wgt
        return m
    rows, cols = matrix(image.shape[0], out_h), matrix(image.shape[1], out_w)
    out = np.einsum("owc,pw->opc", np.einsum("oh,hwc->owc", rows, image.astype(np.float64)), cols)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _official_ade20k(image_path, mask_path, crop_size=512):
    """EfficientViT's ADE20KDataset.__getitem__ step by step (cv2 resize replaced by its written-out kernel)."""
    image = np.array(Image.open(image_path).convert("RGB"))
    mask = np.array(Image.open(mask_path), dtype=np.int64) - 1
    h, w = image.shape[:2]
    if h < w:
        th = crop_size
        tw = math.ceil(w / h * th / 32) * 32
    else:
        tw = crop_size
        th = math.ceil(h / w * tw / 32) * 32
    if th != h or tw != w:
        image = _keys_cubic_resize(image, th, tw)
    return image, np.where(mask == -1, 255, mask)  # the official ignore is -1, ours 255


def test_eval_protocol_matches_the_official_script(ade, cityscapes):
    info = open_segmentation(ade)
    b = build_segmentation_batches(info, train=False, crop_size=64, batch_size=1, shard=Shard(workers=0))
    seen = 0
    for (x, labels), (image_path, mask_path) in zip(b.iterate(0), b.dataset.samples):
        ref_image, ref_mask = _official_ade20k(image_path, mask_path)
        assert x.shape[2:] == ref_image.shape[:2] and min(ref_image.shape[:2]) == 512
        assert np.abs(x[0].permute(1, 2, 0).numpy().astype(int) - ref_image).max() <= 1
        assert np.array_equal(labels[0].numpy(), ref_mask)
        seen += 1
    assert seen == 2 and eval_size(40, 60, 512) == (512, 768) and eval_size(50, 30, 512) == (864, 512)
    # Cityscapes: the official Resize((crop, 2 crop)) then the labelId table; crop 1024 is the full 1024 x 2048.
    cs = open_segmentation(cityscapes)
    b = build_segmentation_batches(cs, train=False, crop_size=64, batch_size=1, eval_size=(16, 32),
                                   shard=Shard(workers=0))
    x, labels = next(iter(b.iterate(0)))
    image_path, mask_path = b.dataset.samples[0]
    ref = _keys_cubic_resize(np.array(Image.open(image_path).convert("RGB")), 16, 32)
    assert np.abs(x[0].permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1
    assert np.array_equal(labels[0].numpy(), np.asarray(CITYSCAPES_TABLE)[np.array(Image.open(mask_path))])


def test_batches_share_the_loader_order_sharding_and_resume(ade):
    info = open_segmentation(ade)
    kw = dict(train=True, crop_size=32)
    one = list(build_segmentation_batches(info, batch_size=2, shard=Shard(seed=5, workers=0), **kw).iterate(3))
    assert len(one) == 1 and one[0][0].shape == (2, 3, 32, 32) and one[0][1].shape == (2, 32, 32)
    ranks = [list(build_segmentation_batches(info, batch_size=1, shard=Shard(5, r, 2, 0), **kw).iterate(3))
             for r in (0, 1)]
    assert torch.equal(torch.cat([ranks[0][0][1], ranks[1][0][1]]), one[0][1])
    assert list(build_segmentation_batches(info, batch_size=2, shard=Shard(seed=5, workers=0),
                                           **kw).iterate(3, start_step=1)) == []
    ev = build_segmentation_batches(info, train=False, crop_size=32, batch_size=2, shard=Shard(workers=0))
    with pytest.raises(ValueError, match="evaluate with batch size 1"):
        list(ev.iterate(0))
    with pytest.raises(ValueError, match="batch size 0"):
        build_segmentation_batches(info, batch_size=0, **kw)


def test_photometric_jitter_touches_images_only_and_normalises():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    plain = SegBatchAugment((0.5,) * 3, (0.25,) * 3, jitter=False)(x)
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.25)
    torch.manual_seed(0)
    a = SegBatchAugment((0.5,) * 3, (0.25,) * 3, p=1.0)(x)
    torch.manual_seed(0)
    b = SegBatchAugment((0.5,) * 3, (0.25,) * 3, p=1.0)(x)
    assert torch.equal(a, b) and not torch.allclose(a, plain) and a.shape == x.shape
    grey = SegBatchAugment((0.5,), (0.25,), p=1.0)(x[:, :1])  # brightness and contrast only
    assert grey.shape == (4, 1, 8, 8)


def test_multi_scale_eval_views_are_the_protocol_sizes_times_each_ratio():
    """One view per ratio, each resized from the original image (so the ratio-1 view is the single-scale one);
    the labels stay at the original size."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (60, 90), generator=g)
    views, out = SegEvalTransform(short_side=64, scales=(0.5, 1, 1.5))(img, labels)
    # short side 64 x r, the long side rounded up to a multiple of 32: 90/60 * 32 -> 64, * 64 -> 96, * 96 -> 160
    assert [tuple(v.shape) for v in views] == [(3, 32, 64), (3, 64, 96), (3, 96, 160)]
    assert torch.equal(views[1], SegEvalTransform(short_side=64)(img, labels)[0]) and out is labels
    views, _ = SegEvalTransform(size=(40, 80), scales=(0.5, 1))(img, labels)
    assert [tuple(v.shape[-2:]) for v in views] == [(20, 40), (40, 80)]
    one, _ = SegEvalTransform(scales=(0.5,))(img, labels)  # one ratio: a plain image, not a tuple
    assert isinstance(one, torch.Tensor) and one.shape == (3, 30, 45)
    for bad in ((), (0,), (-1, 1), (float("nan"),)):
        with pytest.raises(ValueError, match="give one or more ratios of the evaluation size"):
            SegEvalTransform(short_side=64, scales=bad)
