"""Fashion-MNIST idx reading, the search order and its errors, and the in-memory batch iterator."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from qtvit.data import (FASHION_MNIST_CLASSES, Shard, TensorBatches, build_batches, find_fashion_mnist,
                        load_fashion_mnist,
                        open_dataset, read_idx, resolve_data_config, write_idx)
from conftest import SMALL_FMNIST


def test_small_subset_is_real_fashion_mnist():
    x, y = load_fashion_mnist("train", SMALL_FMNIST)
    assert x.shape == (200, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    # the first training image of Fashion-MNIST is an ankle boot (label 9)
    assert int(y[0]) == 9 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    xt, yt = load_fashion_mnist("test", SMALL_FMNIST)
    assert xt.shape == (100, 28, 28) and torch.bincount(yt, minlength=10).tolist() == [10] * 10
    # pixel statistics close to the full set's (0.2860 / 0.3530)
    assert abs(x.float().div(255).mean().item() - 0.286) < 0.03


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)


def test_truncated_and_bad_files_are_clear_errors(tmp_path):
    a = np.zeros((4, 28, 28), np.uint8)
    write_idx(tmp_path / "t-idx3-ubyte", a)
    data = (tmp_path / "t-idx3-ubyte").read_bytes()
    (tmp_path / "t-idx3-ubyte").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t-idx3-ubyte")
    (tmp_path / "b-idx3-ubyte").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "b-idx3-ubyte")
    (tmp_path / "c-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt"):
        read_idx(tmp_path / "c-idx3-ubyte.gz")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        find_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    shutil.copy(f"{SMALL_FMNIST}/train-images-idx3-ubyte.gz", tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        open_dataset(tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "missing-folder")


def test_env_var_and_uncompressed_files(tmp_path, monkeypatch):
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        with gzip.open(f"{SMALL_FMNIST}/{f}.gz") as src, open(tmp_path / f, "wb") as dst:
            dst.write(src.read())
    monkeypatch.setenv("QTVIT_FASHION_MNIST", str(tmp_path))
    assert find_fashion_mnist(download=False) == tmp_path
    x, _ = load_fashion_mnist("test", download=False)
    assert x.shape == (100, 28, 28)


def test_tensor_batches_shard_union_equals_single_process():
    info = open_dataset(SMALL_FMNIST)
    cfg = resolve_data_config(None, 1, 32, dataset_mean=info.mean, dataset_std=info.std)
    assert cfg.mean == (0.2860,) and cfg.input_size == (1, 32, 32)
    single = build_batches(info, train=True, data_cfg=cfg, batch_size=16, shard=Shard(seed=3))
    halves = [build_batches(info, train=True, data_cfg=cfg, batch_size=8, shard=Shard(seed=3, rank=r, world=2))
              for r in range(2)]
    assert len(single) == len(halves[0]) == 12  # 200 // 16, last partial batch dropped
    for (x, y), (x0, y0), (x1, y1) in zip(single.iterate(1), halves[0].iterate(1), halves[1].iterate(1)):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    # the order is a function of (seed, epoch): re-entering an epoch at step 5 gives the same batches
    full = list(single.iterate(2))
    late = list(single.iterate(2, start_step=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], late))
    assert not torch.equal(full[0][1], next(iter(single.iterate(3)))[1])  # epochs differ


def test_train_crops_are_shifted_flipped_views():
    img = torch.arange(28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 28, 28) + 1
    b = TensorBatches(img, torch.zeros(1, dtype=torch.long), 1, 28, True, padding=2, hflip=True)
    from qtvit.data.transforms import tensor_train_images
    crop = torch.tensor([[0, 4]])
    out = tensor_train_images(img, 28, crop, torch.tensor([False]), 2)
    # offsets (x=0, y=4) into the image padded by 2: rows 2.. of the image, columns shifted right by 2
    assert torch.equal(out[0, 0, :26, 2:], img[0, 2:, :26]) and int(out[0, 0, :, :2].sum()) == 0
    flipped = tensor_train_images(img, 28, torch.tensor([[2, 2]]), torch.tensor([True]), 2)
    assert torch.equal(flipped[0, 0], img[0].flip(-1))
    x, _ = next(iter(b.iterate(0)))
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.uint8
    assert int(x.float().sum()) <= int(img.float().sum())  # a crop of a zero-padded image loses, never adds


def test_eval_view_pads_to_model_size():
    x, _ = load_fashion_mnist("test", SMALL_FMNIST)
    from qtvit.data.transforms import tensor_eval_images
    v = tensor_eval_images(x[:2], 32)
    assert v.shape == (2, 1, 32, 32) and torch.equal(v[:, 0, 2:30, 2:30], x[:2]) and int(v[:, :, :2].sum()) == 0
    r = tensor_eval_images(x[:2], 24)  # smaller: resized
    assert r.shape == (2, 1, 24, 24) and r.dtype == torch.uint8


def test_no_copy_and_no_network_explains_how_to_get_it(tmp_path, monkeypatch):
    import urllib.request

    import qtvit.data.fashion_mnist as fm
    monkeypatch.delenv("QTVIT_FASHION_MNIST", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="downloading .* failed .*network is unreachable.*apt-get install"):
        open_dataset(None)
    with pytest.raises(FileNotFoundError, match="not found"):
        find_fashion_mnist(download=False)
    # a cached copy (as a download leaves it) is found without the network
    shutil.copytree(SMALL_FMNIST, tmp_path / "cache" / "qtvit" / "fashion-mnist", dirs_exist_ok=True)
    assert find_fashion_mnist() == tmp_path / "cache" / "qtvit" / "fashion-mnist"
