"""ImageNet-style folders: class discovery, unreadable images skipped and counted, the eval protocol, seeded train
crops, device-side augmentation and mixup/cutmix."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qtvit.data import (BatchAugment, EvalTransform, Shard, TrainTransform, build_batches, mixup_cutmix, open_dataset,
                        resolve_data_config)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (tmp_path / "train" / "dog" / "readme.txt").write_text("ignored: not an image extension")
    return tmp_path


def test_folder_classes_and_skipped_images(folder):
    info = open_dataset(folder)
    assert info.kind == "folder" and info.classes == ["cat", "dog", "eel"] and info.eval_split == "val"
    cfg = resolve_data_config(None, 3, 16, crop_pct=0.875)
    batches = build_batches(info, train=True, data_cfg=cfg, batch_size=4, shard=Shard(seed=1, workers=0))
    assert batches.num_samples == 13  # 12 images + the broken one; the .txt is not listed
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        seen = [(x, y) for x, y in batches.iterate(0)]
    # The broken image is left out of its batch (not replaced by another sample): 13 listed, 12 seen, 1 skipped.
    assert len(seen) == 3 and all(x.shape[1:] == (3, 16, 16) and x.dtype == torch.uint8 for x, _ in seen)
    assert sorted(len(x) for x, _ in seen) == [3, 4, 4] and all(len(x) == len(y) for x, y in seen)
    assert batches.num_skipped == 1
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        list(batches.iterate(1))
    assert batches.num_skipped == 1  # counted once, however many epochs meet it
    ev = build_batches(info, train=False, data_cfg=cfg, batch_size=4, shard=Shard(workers=0))
    labels = torch.cat([y for _, y in ev.iterate(0)])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_workers_give_the_same_batches(folder):
    info = open_dataset(folder)
    cfg = resolve_data_config(None, 3, 16)
    a, b = ([x for x, _ in build_batches(info, train=True, data_cfg=cfg, batch_size=4,
                                         shard=Shard(seed=2, workers=w)).iterate(1)] for w in (0, 2))
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == 3


def test_eval_transform_is_resize_ceil_then_centre_crop():
    img = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 255)
    tf = EvalTransform(224, crop_pct=0.95)
    assert tf.resize == math.ceil(224 / 0.95) == 236
    out = tf(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    # crop_pct 1: short side to exactly the size; the centre crop of the resized image
    ref = np.asarray(img.resize((48, 32), Image.BICUBIC))[:, 8:40]
    np.testing.assert_array_equal(EvalTransform(32, 1.0)(img).permute(1, 2, 0).numpy(), ref)
    with pytest.raises(ValueError, match="crop_pct"):
        EvalTransform(32, 1.5)


def test_train_transform_is_seeded_per_sample():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    tf = TrainTransform(24, seed=5)
    assert torch.equal(tf(img, 3, 1), tf(img, 3, 1)) and tf(img, 3, 1).shape == (3, 24, 24)
    assert not torch.equal(tf(img, 3, 1), tf(img, 4, 1)) or not torch.equal(tf(img, 3, 1), tf(img, 3, 2))


def test_mixup_cutmix_targets_stay_distributions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    t = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    for mix, cut in ((0.4, 0.0), (0.0, 1.0)):
        xm, tm = mixup_cutmix(x, t, mix, cut, g)
        torch.testing.assert_close(tm.sum(-1), torch.ones(6))
        lam = float(tm[0, 0])  # sample 0 is class 0, its partner (flip) sample 5 is class 2
        if mix:
            torch.testing.assert_close(xm[0], lam * x[0] + (1 - lam) * x[5])
        else:  # the label weight is the share of pixels kept
            kept = (xm[0] == x[0]).float().mean().item()
            assert kept == pytest.approx(lam, abs=1e-6)
    same = mixup_cutmix(x, t, 0.0, 0.0, g)
    assert same[0] is x and same[1] is t


def test_batch_augment_normalises_and_augments():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plain = BatchAugment((0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(plain(x), (x.float() / 255 - 0.5) / 0.25)
    torch.manual_seed(0)
    aug = BatchAugment((0.5,) * 3, (0.25,) * 3, randaug_n=2, randaug_m=9, erase_prob=1.0)
    y = aug(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, plain(x))


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
@pytest.mark.usefixtures("tiny_models")
def test_training_on_a_folder_with_the_full_augmentation(folder, tmp_path):
    from qtvit.train import train, validate
    from conftest import tiny_config
    r = train(tiny_config(tmp_path, data=str(folder), batch_size=4, epochs=1, workers=0, randaug_n=2, randaug_m=5,
                          reprob=0.5, mixup=0.2, cutmix=1.0, bce=True))
    row = r["history"][-1]
    assert len(r["step_losses"]) == 3 and all(math.isfinite(l) for _, l in r["step_losses"])
    assert row["skipped_images"] == 1 and row["eval_images"] == 6
    v = validate(r["run_dir"], data=str(folder), device="cpu", workers=0)
    correct = v["top1"] * 6 / 100  # micro top-1: a whole number of the 6 images
    assert v["images"] == 6 and abs(correct - round(correct)) < 1e-3 and v["top5"] == 100.0  # 3 classes


# --------------------------------------------------------------------------------- unreadable images, symlinks
def _images(d, n, seed=0, start=0):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _eval_batches(root, workers=0, batch_size=3):
    from qtvit.data import FolderBatches, ImageFolder
    return FolderBatches(ImageFolder(root, EvalTransform(8)), batch_size, False, workers=workers)


class _SaysA(torch.nn.Module):
    """Predicts class 0 for every image: its top-1 is the share of class-0 images among those evaluated."""

    def forward(self, x):
        return torch.tensor([5.0, 0.0]).expand(len(x), 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_eval_images_are_skipped_not_replaced(tmp_path, workers):
    from qtvit.data import DataConfig
    from qtvit.tasks.classification import evaluate_classification as evaluate
    _images(tmp_path / "a", 3)
    _images(tmp_path / "b", 2, seed=1)
    for name in ("a/x.png", "b/y.jpg", "b/z.png"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    batches = _eval_batches(tmp_path, workers)
    assert batches.num_samples == 8
    with pytest.warns(UserWarning, match="skipping unreadable image") as rec:
        labels = torch.cat([y for _, y in batches.iterate(0)])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1] and batches.num_skipped == 3 and len(rec) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for a file already reported
        r = evaluate(_SaysA(), batches, DataConfig(mean=(0.5,) * 3, std=(0.5,) * 3), torch.device("cpu"), 2)
    # 3 of the 5 readable images are class a: 60 %, on 5 images (the bug: 87.5 % on 8, copies of readable ones)
    assert r.images == 5 and r.scores["top1"] == pytest.approx(60.0) and batches.num_skipped == 3


def test_a_batch_with_no_readable_image(tmp_path):
    from qtvit.data import FolderBatches, ImageFolder
    _images(tmp_path / "a", 1)
    (tmp_path / "b").mkdir()
    for i in range(3):
        (tmp_path / "b" / f"bad{i}.png").write_bytes(b"")
    ds = ImageFolder(tmp_path, EvalTransform(8))
    with pytest.warns(UserWarning):  # batches [a/0, b/bad0] and [b/bad1, b/bad2]
        sizes = [len(x) for x, _ in FolderBatches(ds, 2, False, workers=0).iterate(0)]
    assert sizes == [1]  # the all-unreadable batch is left out, not an empty or padded one
    # A training step cannot be dropped: the schedule and the resume position count it, and on several processes
    # the other ranks would wait for it forever. One process, and rank 0 of two (two steps of one image each).
    for rank, world in ((0, 1), (0, 2)):
        with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no image of training step \d .* on rank 0"):
            list(FolderBatches(ds, 1, True, rank=rank, world=world, workers=0).iterate(0))


def test_symlink_loops_list_each_file_once_with_its_class(tmp_path):
    from qtvit.data import ImageFolder
    _images(tmp_path / "a", 2)
    _images(tmp_path / "b", 2, start=2)
    (tmp_path / "a" / "up").symlink_to("..")  # a loop through the folder
    (tmp_path / "b" / "to_a").symlink_to("../a")  # class a's images again, under b
    ds = ImageFolder(tmp_path)
    got = sorted((os.path.relpath(p, tmp_path), t) for p, t in ds.samples)
    assert got == [("a/0.png", 0), ("a/1.png", 0), ("b/2.png", 1), ("b/3.png", 1)]  # the bug: 164 samples
    (tmp_path / "c").symlink_to("a")  # one folder under two class names
    with pytest.raises(ValueError, match=r"class folders \['a', 'c'\] of .* are links to the same folder"):
        ImageFolder(tmp_path)


def test_links_out_of_the_folder_are_followed_once(tmp_path):
    from qtvit.data import ImageFolder
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    _images(root / "a", 1)
    _images(outside, 1, start=1)
    (outside / "self").symlink_to(".")  # a loop outside the folder
    (root / "b").mkdir()
    (root / "b" / "more").symlink_to(outside)  # datasets assembled from links to other disks
    got = sorted((os.path.relpath(p, root), t) for p, t in ImageFolder(root).samples)
    assert got == [("a/0.png", 0), ("b/more/1.png", 1)]


def test_bombs_and_fuzzed_files_in_a_folder_are_skipped_and_counted(tmp_path):
    from test_images import _png_header_only, fuzz_files
    _images(tmp_path / "a", 3)
    bad = fuzz_files(tmp_path / "b")
    bad.append(_png_header_only(tmp_path / "b" / "bomb.png", 30000, 30000))
    batches = _eval_batches(tmp_path, batch_size=16)
    assert batches.num_samples == 3 + len(bad)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        labels = torch.cat([y for _, y in batches.iterate(0)])
    assert labels.tolist() == [0, 0, 0] and batches.num_skipped == len(bad)
    assert any("bomb.png declares an image of 900,000,000 pixels" in str(w.message) for w in rec)


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
@pytest.mark.usefixtures("tiny_models")
def test_bombs_are_skipped_by_training_and_reported_by_predict(folder, tmp_path, capsys):
    from qtvit.cli import main
    from qtvit.train import train, validate
    from conftest import tiny_config
    from test_images import _png_header_only
    for split in ("train", "val"):
        _png_header_only(folder / split / "eel" / "bomb.png", 30000, 30000)
    r = train(tiny_config(tmp_path, data=str(folder), batch_size=4, epochs=1, workers=0))
    assert r["history"][-1]["eval_images"] == 6  # the bomb skipped (the bug: DecompressionBombError, a crash)
    v = validate(r["run_dir"], data=str(folder), device="cpu", workers=0)
    assert v["images"] == 6 and v["skipped_images"] == 1
    capsys.readouterr()
    assert main(["predict", str(folder / "val" / "eel" / "bomb.png"), "--checkpoint", r["run_dir"]]) == 1
    err = capsys.readouterr().err
    assert "bomb.png declares an image of 900,000,000 pixels" in err and "Traceback" not in err
