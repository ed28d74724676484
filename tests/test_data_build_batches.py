"""build_batches: keyword-only, its bad arguments, and one read of the data shared by a run's batch iterators."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qtvit.data import Shard, build_batches, open_dataset, resolve_data_config
from conftest import SMALL_FMNIST


def test_arguments_are_keywords_and_checked():
    info = open_dataset(SMALL_FMNIST)
    cfg = resolve_data_config(None, 1, 28, dataset_mean=info.mean, dataset_std=info.std)
    with pytest.raises(TypeError):
        build_batches(info, True, cfg, 16)  # which of the twelve was which: no longer guessed
    with pytest.raises(ValueError, match="batch size 0 is not a positive number of images"):
        build_batches(info, train=True, data_cfg=cfg, batch_size=0)
    with pytest.raises(ValueError, match="limit -5 would keep no images"):
        build_batches(info, train=True, data_cfg=cfg, batch_size=8, limit=-5)
    b = build_batches(info, train=True, data_cfg=cfg, batch_size=8, limit=40)
    assert b.num_samples == 40 and len(b) == 5


def test_idx_files_are_read_once_and_shared(monkeypatch):
    import qtvit.data.info as data  # where DatasetInfo.arrays reads the idx files
    reads = []
    original = data.load_fashion_mnist
    monkeypatch.setattr(data, "load_fashion_mnist",
                        lambda split, *a, **k: reads.append(split) or original(split, *a, **k))
    info = open_dataset(SMALL_FMNIST)
    cfg = resolve_data_config(None, 1, 28, dataset_mean=info.mean, dataset_std=info.std)
    train = build_batches(info, train=True, data_cfg=cfg, batch_size=20)
    bn = build_batches(info, train=True, data_cfg=cfg, batch_size=50)
    build_batches(info, train=False, data_cfg=cfg, batch_size=50)
    assert reads == ["train", "test"] and train.images is bn.images


def test_a_folder_is_listed_once_for_the_same_transform(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    info = open_dataset(tmp_path)
    cfg = resolve_data_config(None, 3, 8)
    train = build_batches(info, train=True, data_cfg=cfg, batch_size=2, shard=Shard(workers=0))
    bn = build_batches(info, train=True, data_cfg=cfg, batch_size=3, shard=Shard(workers=0))
    other = build_batches(info, train=True, data_cfg=cfg, batch_size=2, shard=Shard(seed=1, workers=0))
    assert train.dataset is bn.dataset and other.dataset is not train.dataset
    assert len(list(bn.iterate(5))) == 2 and len(list(train.iterate(0))) == 3
