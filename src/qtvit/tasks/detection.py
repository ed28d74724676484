"""Object detection and instance segmentation: its data (the Fashion-MNIST scenes' instances, COCO 2017, any
COCO-format folder), joint random resize, crop and flip of images, boxes and masks, the sum of torchvision's
detection losses, COCO's box (and mask) AP; a saved detector's validation and its drawn detections of image files
(det_evaluate.py, det_predict.py).

The detectors are torchvision's (``qtvit.models.detection``): in training they take (images, targets) and return
their loss dict, so the loop's model is ``_DetectorTraining`` around them, fed a ``DetBatch`` (the list of images
and the list of targets of a batch). Classes count the background (label 0, torchvision's convention): a dataset of
K categories trains a detector of K + 1 classes, checked when the task is made.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import Shard
from ..data.detection import SCENE_NAMES, build_detection_batches, open_detection
from ..data.segmentation import looks_like_segmentation
from ..options import OptionError
from .common import EvalResult
from .det_evaluate import BOX_SCORES, MASK_SCORES, evaluate_detection, has_masks
from .det_predict import SCORE_THRESHOLD, detect_images

__all__ = ["Detection", "DetBatch", "EVAL_BATCH_MAX", "check_category_ids", "detection_eval_batches"]

_CLASSIFICATION_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist")
# Evaluation batches of detection hold full-size masks per detection (100 x H x W floats an image): at most this many
# images go through the detector at once, whatever --eval-batch-size says.
EVAL_BATCH_MAX = 8


@dataclass
class DetBatch:
    """A training batch: the images (float (3, H, W) in 0..1) and their targets, on the device. ``len`` is the number
    of images, as the loop counts them."""
    images: list
    targets: list

    def __len__(self) -> int:
        return len(self.images)


class _DetectorTraining(nn.Module):
    """A detector as the loop trains it: ``forward(DetBatch)`` -> torchvision's loss dict. A module of its own so
    that DDP, which wraps it, runs its hooks around the forward that is used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: DetBatch):
        return self.model(batch.images, batch.targets)


def _test_size(net: nn.Module, img_size: int | None) -> None:
    """--img-size of a saved detector: the short side its transform resizes images to (the long side's cap raised to
    it when below)."""
    if img_size is not None:
        net.transform.min_size = (int(img_size),)
        net.transform.max_size = max(int(net.transform.max_size), int(img_size))


def check_category_ids(net: nn.Module, info) -> None:
    """A dataset scored or shown against a saved detector must have the category ids it was trained on (recorded
    with its weights): label k means category ``cat_ids[k - 1]`` in both."""
    saved = net.pretrained_cfg.get("category_ids")
    if saved is not None and list(saved) != list(info.cat_ids):
        raise ValueError(f"the dataset's category ids {info.cat_ids[:8]}... differ from the checkpoint's "
                         f"{list(saved)[:8]}...; validate on the dataset the model was trained for")


def detection_eval_batches(info, *, batch_size: int, shard: Shard, limit: int | None = None):
    """A saved detector's evaluation batches of `info`: the images as they are (the detector resizes them)."""
    return build_detection_batches(info, train=False, size=1, batch_size=batch_size, limit=limit, shard=shard)


class Detection:
    """Object detection (see the module docstring). ``metric`` is the box AP (IoU 0.50:0.95), which Mask R-CNN and
    RetinaNet both have; ``scores`` are COCO's twelve box numbers, and the twelve mask numbers too once the task's
    model (``train_module``) turns out to predict masks."""

    name = "detection"
    metric = "box_ap"
    scores = BOX_SCORES
    resizes_pos_embed = False  # the detectors resize the backbone's embedding to each input themselves

    def __init__(self, num_classes: int, data_cfg, cfg, info=None):
        if info is not None and num_classes != len(info.classes):
            k = len(info.classes) - 1
            raise ValueError(f"--num-classes {num_classes}: a detector counts the background as class 0 "
                             f"(torchvision's convention), so this dataset's {k} categories need {k + 1} classes; "
                             "leave --num-classes out")
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, cfg.amp
        self.loss_parts: dict[str, torch.Tensor] = {}  # the last step's losses by name (detached), for callbacks

    # ------------------------------------------------------------------------------------------- data and options
    @staticmethod
    def open_data(data: str | os.PathLike | None, num_classes: int | None = None):
        """The scenes (the default), COCO 2017 or a COCO-format folder (see ``data.detection.open_detection``);
        classification and segmentation datasets are refused, naming the flag that trains on them."""
        if data is not None and str(data).lower() in _CLASSIFICATION_NAMES:
            raise ValueError(f"--task detection: --data {data} is a classification dataset; leave --data out (or pass "
                             f"{SCENE_NAMES[1]}) for the scenes' instances, or pass a COCO-format folder")
        if data is not None and str(data).lower() not in SCENE_NAMES and looks_like_segmentation(data):
            raise ValueError(f"--task detection: --data {data} is a segmentation dataset (images and masks, no "
                             "instances); pass --task segmentation to train on it, or a COCO-format folder")
        try:
            return open_detection(data)
        except FileNotFoundError as e:  # a bad annotation file's own error names the file and the record already
            raise FileNotFoundError(f"--task detection: {e}. Detection reads COCO-format data (an ImageNet-style "
                                    "folder is classification data: --task classification)") from None

    @staticmethod
    def check_config(cfg) -> None:
        used = tuple(k for k in ("mixup", "cutmix", "randaug_n", "reprob", "bce", "ohem", "bn_reestimate_images",
                                 "eval_size") if getattr(cfg, k))
        if used:
            raise OptionError(used, "are not for detection, which augments with random resize, crop and flip of "
                              "images, boxes and masks together (and evaluates each image at the detector's own "
                              "size): leave them out")

    @staticmethod
    def recorded(cfg, info) -> dict:
        """What the saved weights keep besides the class names: the category id of each label 1..K (predictions
        are written with the dataset's own ids)."""
        return {"category_ids": list(info.cat_ids)}

    @staticmethod
    def batches(cfg, info, data_cfg, shard: Shard):
        """(training, evaluation, None) batches of a run: --img-size is the training crop (default: the model's
        input size, its short side); evaluation takes the images as they are, at most EVAL_BATCH_MAX at a time."""
        size = min(data_cfg.input_size[-2:])
        train = build_detection_batches(info, train=True, size=size, batch_size=cfg.batch_size, shard=shard,
                                        limit=cfg.limit_train, scale_range=tuple(cfg.scale_range), hflip=cfg.hflip,
                                        scene_items=tuple(cfg.scene_items))
        evals = build_detection_batches(info, train=False, size=size, shard=shard, limit=cfg.limit_eval,
                                        batch_size=min(cfg.eval_batch_size, EVAL_BATCH_MAX))
        return train, evals, None

    # ------------------------------------------------------------------------------------------- a training step
    def train_module(self, model: nn.Module) -> nn.Module:
        if has_masks(model):
            self.scores = BOX_SCORES + MASK_SCORES
        return _DetectorTraining(model)

    def batch(self, images: list, targets: list, device: torch.device, gen: torch.Generator):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in targets]
        return DetBatch(images, targets), None

    def loss(self, losses, target=None) -> torch.Tensor:
        if not isinstance(losses, dict):
            raise ValueError(f"{self.cfg.model} is not a detector: its training forward returned "
                             f"{type(losses).__name__}, not torchvision's loss dict; train a maskrcnn_* or "
                             "retinanet_* model with --task detection")
        self.loss_parts = {k: v.detach() for k, v in losses.items()}
        return sum(v.float() for v in losses.values())

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> EvalResult:
        return evaluate_detection(model, batches, device, self.amp)

    # ------------------------------------------------------------------------------------------- a saved model
    @staticmethod
    def validate(net: nn.Module, info, num_classes: int, dist, *, batch_size=None, img_size=None, crop_pct=None,
                 amp="none", limit=None, workers=4, flip=False, scales=(1.0,)) -> tuple[EvalResult, object, dict]:
        """(result, batches, extra fields of validate's answer) of a saved detector on `info`'s evaluation split."""
        if crop_pct is not None or flip or tuple(scales) != (1.0,):
            raise ValueError("--crop-pct, --flip and --scales are for classification and segmentation checkpoints; "
                             "a detector sees each whole image (--img-size sets the short side it is resized to)")
        check_category_ids(net, info)
        _test_size(net, img_size)
        batches = detection_eval_batches(info, batch_size=batch_size or 4, limit=limit,
                                         shard=Shard(rank=dist.rank, world=dist.world, workers=workers))
        r = evaluate_detection(net, batches, dist.device, amp, progress=dist.is_main)
        return r, batches, {"test_size": [list(net.transform.min_size), int(net.transform.max_size)]}

    @staticmethod
    def describe(r: dict) -> str:
        """The scores as `qtvit validate` prints them."""
        line = f"box AP {r['box_ap']:.2f}% (AP50 {r['box_ap50']:.2f}%, AP75 {r['box_ap75']:.2f}%)"
        if "mask_ap" in r:
            line += f"  mask AP {r['mask_ap']:.2f}% (AP50 {r['mask_ap50']:.2f}%, AP75 {r['mask_ap75']:.2f}%)"
        return line

    @staticmethod
    def predict(net: nn.Module, images: list, names: list[str], *, topk: int = 5, batch_size: int = 64,
                img_size=None, crop_pct=None, output_dir=None, overwrite: bool = False):
        """Each image's detections drawn into `output_dir`, and their COCO results json (see det_predict)."""
        if output_dir is None:
            raise ValueError("a detection checkpoint draws its detections: pass --output-dir, the folder to write "
                             "each image's <name>_detections.png and detections.json (COCO results) to")
        if crop_pct is not None:
            raise ValueError("--crop-pct is for classification checkpoints; a detector sees the whole image")
        _test_size(net, img_size)
        cat_ids = net.pretrained_cfg.get("category_ids") or list(range(1, len(names)))
        return detect_images(net, images, output_dir, names, cat_ids, SCORE_THRESHOLD, overwrite)
