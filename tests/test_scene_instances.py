"""Instances of the Fashion-MNIST scenes: each item's visible mask agrees with the scene's labels, boxes are the
masks' tight boxes, hidden items are dropped, the scenes themselves are unchanged, and the joint augmentation keeps
image, boxes and masks together."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from qtvit.data import load_fashion_mnist
from qtvit.data.scene_instances import FashionMNISTSceneInstances, scene_instances
from qtvit.data.scenes import FashionMNISTScenes
from conftest import SMALL_FMNIST


@pytest.fixture(scope="module")
def scenes():
    x, y = load_fashion_mnist("train", SMALL_FMNIST)
    return FashionMNISTScenes(x, y, 12)


def test_the_segmentation_scenes_are_unchanged_byte_for_byte(scenes):
    # the digest of scenes 0-2 as main's generator (before instances existed, under torch 2.13) wrote them
    h = hashlib.sha256()
    for i in range(3):
        image, labels = scenes.scene(i)
        h.update(image.numpy().tobytes())
        h.update(labels.numpy().tobytes())
    assert h.hexdigest() == "c9741c1265fe45b06440b8fa0acb57b18b91e8293cc6b043e5650cabf4edfcfd"


@pytest.mark.parametrize("i", range(12))
def test_instances_agree_with_the_scene_labels(scenes, i):
    _, labels = scenes.scene(i)
    t = scene_instances(scenes, i, min_pixels=1)
    masks = t["masks"].bool()
    assert masks.shape[1:] == labels.shape and masks.dtype == torch.bool
    # visible masks are disjoint, each shows its own class, and together they are the scene's garment pixels
    assert int(masks.sum(0).max()) <= 1
    for m, label in zip(masks, t["labels"]):
        assert m.any() and bool((labels[m] == label).all())
    assert torch.equal(masks.any(0), labels > 0)
    for m, box, area in zip(masks, t["boxes"], t["area"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert area == m.sum()
    assert torch.equal(t["iscrowd"], torch.zeros(len(masks), dtype=torch.int64))


def test_items_hidden_below_min_pixels_are_dropped(scenes):
    counts = []
    for i in range(len(scenes)):
        every = scene_instances(scenes, i, min_pixels=1)
        kept = scene_instances(scenes, i, min_pixels=200)
        assert (kept["area"] >= 200).all()
        assert len(kept["labels"]) == int((every["area"] >= 200).sum())
        counts.append((len(every["labels"]), len(scenes.layout(i).items)))
    # every item of a scene shows at least one pixel unless a later item covers it whole
    assert all(n <= items for n, items in counts) and any(n > 0 for n, _ in counts)


def test_dataset_items_and_joint_augmentation(scenes):
    pytest.importorskip("torchvision")
    from qtvit.data.det_transforms import detection_transform
    plain = FashionMNISTSceneInstances(scenes)
    image, target = plain[3]
    assert image.dtype == torch.uint8 and target["image_id"] == 3
    torch.manual_seed(0)
    aug = FashionMNISTSceneInstances(scenes, transform=detection_transform(True, 160, scale=(0.4, 1.2)))
    for i in range(6):
        image, t = aug[i]
        assert image.shape == (3, 160, 160) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        n = len(t["boxes"])
        assert t["masks"].shape == (n, 160, 160) and t["labels"].shape == (n,) and t["area"].shape == (n,)
        for m, box in zip(t["masks"].bool(), t["boxes"]):
            # box and mask moved together: the box holds the mask, up to the pixel the mask's nearest-neighbour
            # resize may shift (the box scales exactly; a crop that cut the item clamps the box, not the mask's)
            ys, xs = torch.nonzero(m, as_tuple=True)
            if len(xs):
                assert box[0] - 1 <= xs.min() and box[1] - 1 <= ys.min() and xs.max() < box[2] + 1
                assert ys.max() < box[3] + 1
    ev_image, ev_t = FashionMNISTSceneInstances(scenes, transform=detection_transform(False))[3]
    assert torch.equal(ev_image, plain[3][0].float() / 255) and torch.equal(ev_t["boxes"], plain[3][1]["boxes"])
    with pytest.raises(ValueError, match="min_pixels=0"):
        FashionMNISTSceneInstances(scenes, min_pixels=0)
