"""Image classification: its data (Fashion-MNIST, idx folders, ImageNet-style folders), smoothed one-hot targets
mixed by mixup/cutmix, cross-entropy (or BCE), top-1/top-5 (micro: the fraction of images whose label is in the
top k, the ImageNet number); a saved classifier's validation and its top classes of image files."""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._utils import progress_bar
from ..options import OptionError
from ..data import DataConfig, Shard, build_batches, mixup_cutmix, open_dataset, open_image
from ..data.detection import looks_like_coco
from ..data.segmentation import looks_like_segmentation
from ..data.transforms import BatchAugment, EvalTransform
from .common import EvalResult, preprocessing
from .inputs import autocast, model_input

__all__ = ["Classification", "TopKAccuracy", "evaluate_classification"]


class TopKAccuracy:
    """Top-1 and top-k accuracy with torchmetrics (``average="micro"``; its default "macro" would average per class),
    summed over processes when a process group is up."""

    def __init__(self, num_classes: int, device: torch.device, topk: int = 5):
        from torchmetrics.classification import MulticlassAccuracy
        self.k = min(topk, num_classes)
        self.top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro").to(device)
        self.topk = MulticlassAccuracy(num_classes=num_classes, top_k=self.k, average="micro").to(device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.top1.update(logits, target)
        self.topk.update(logits, target)

    def compute(self) -> tuple[float, float]:
        """(top-1, top-k) in percent."""
        return 100 * float(self.top1.compute()), 100 * float(self.topk.compute())


@torch.no_grad()
def evaluate_classification(model: nn.Module, batches, data_cfg: DataConfig, device: torch.device, num_classes: int,
                            amp: str = "none", channels_last: bool = False, progress: bool = False) -> EvalResult:
    """Top-1 / top-5 (micro, percent), mean cross-entropy and image count over `batches` (all processes);
    `progress`: a bar of the batches on stderr."""
    was_training = model.training
    model.eval()
    acc = TopKAccuracy(num_classes, device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    for x, y in progress_bar(batches.iterate(0), len(batches), "evaluating", progress):
        y = y.to(device)
        with autocast(device, amp):
            logits = model(model_input(x, data_cfg, device, channels_last)).float()
        acc.update(logits, y)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    top1, top5 = acc.compute()
    n = int(sums[1])
    return EvalResult({"top1": round(top1, 4), "top5": round(top5, 4)}, float(sums[0] / max(n, 1)), n)


class Classification:
    """Image classification (see the module docstring)."""

    name = "classification"
    metric = "top1"
    scores = ("top1", "top5")
    resizes_pos_embed = True  # its models store the positional embedding's size (pos_embed_size)

    def __init__(self, num_classes: int, data_cfg: DataConfig, cfg, info=None):
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, cfg.amp
        self.augment = BatchAugment(data_cfg.mean, data_cfg.std, cfg.randaug_n, cfg.randaug_m, cfg.reprob)

    # ------------------------------------------------------------------------------------------- data and options
    @staticmethod
    def open_data(data: str | os.PathLike | None, num_classes: int | None = None):
        """Fashion-MNIST (the default), a folder of its idx files or an ImageNet-style folder; a segmentation
        dataset is refused, naming the flag that trains on it."""
        if data is not None and looks_like_coco(data):
            raise ValueError(f"--data {data} is a detection dataset (COCO format); pass --task detection to train on "
                             "it, or a classification dataset (fashion-mnist, an idx folder, an ImageNet-style folder)")
        if data is not None and looks_like_segmentation(data):
            raise ValueError(f"--data {data} is a segmentation dataset; pass --task segmentation (to train on it; "
                             "`qtvit validate` takes the task from the checkpoint: give it a segmentation model's), "
                             "or a classification dataset (fashion-mnist, an idx folder, an ImageNet-style folder)")
        return open_dataset(data)

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.ohem:
            raise OptionError("ohem", f"{cfg.ohem} is for segmentation only (it picks hard pixels); leave it out")

    @staticmethod
    def recorded(cfg, info) -> dict:
        """Nothing to keep with the weights beyond the preprocessing and class names."""
        return {}

    @staticmethod
    def batches(cfg, info, data_cfg: DataConfig, shard: Shard):
        """(training, evaluation, BN re-estimation or None) batches of a run; `shard`: this process's part."""
        common = dict(data_cfg=data_cfg, shard=shard)
        crops = dict(padding=cfg.padding, hflip=cfg.hflip, limit=cfg.limit_train, rrc_scale=tuple(cfg.rrc_scale))
        train = build_batches(info, train=True, batch_size=cfg.batch_size, **common, **crops)
        evals = build_batches(info, train=False, batch_size=cfg.eval_batch_size, limit=cfg.limit_eval, **common)
        bn = None
        if cfg.bn_reestimate_images > 0:  # training images and crops, in an order of their own
            bn = build_batches(info, train=True, batch_size=min(cfg.bn_reestimate_batch, train.num_samples),
                               **common, **crops)
        return train, evals, bn

    # ------------------------------------------------------------------------------------------- a training step
    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = self.augment(x)  # uint8 in, normalised float out
        off = self.cfg.smoothing / self.num_classes
        target = torch.full((len(y), self.num_classes), off, device=y.device)
        target.scatter_(1, y[:, None], 1 - self.cfg.smoothing + off)
        x, target = mixup_cutmix(x, target, self.cfg.mixup, self.cfg.cutmix, gen)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, target

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"{self.cfg.model} returned {tuple(logits.shape)}, not class logits (B, classes): "
                             "train a segmentation model with --task segmentation")
        logits = logits.float()
        if self.cfg.bce:
            return F.binary_cross_entropy_with_logits(logits, target)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> EvalResult:
        return evaluate_classification(model, batches, self.data_cfg, device, self.num_classes, self.amp,
                                       self.cfg.channels_last)

    # ------------------------------------------------------------------------------------------- a saved model
    @staticmethod
    def validate(net: nn.Module, info, num_classes: int, dist, *, batch_size=None, img_size=None, crop_pct=None,
                 amp="none", limit=None, workers=4, flip=False, scales=(1.0,)) -> tuple[EvalResult, object, dict]:
        """(result, batches, extra fields of validate's answer) of a saved classifier on `info`'s eval split."""
        if flip or tuple(scales) != (1.0,):
            raise ValueError("--flip and --scales are for segmentation checkpoints (flip and multi-scale tests of "
                             "the label maps); leave them out for a classifier")
        data_cfg = preprocessing(net, img_size, crop_pct, info.mean, info.std)
        batches = build_batches(info, train=False, data_cfg=data_cfg, batch_size=batch_size or 256, limit=limit,
                                shard=Shard(rank=dist.rank, world=dist.world, workers=workers))
        return evaluate_classification(net, batches, data_cfg, dist.device, num_classes, amp,
                                       progress=dist.is_main), batches, {}

    @staticmethod
    def describe(r: dict) -> str:
        """The scores as `qtvit validate` prints them."""
        return f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%"

    @staticmethod
    @torch.no_grad()
    def predict(net: nn.Module, images: list, names: list[str], *, topk: int = 5, batch_size: int = 64,
                img_size=None, crop_pct=None, output_dir=None, overwrite: bool = False) -> Iterator[dict]:
        """For each image file, in order: {"image", "top": [(class name, probability), ...]} with the `topk` most
        likely classes, `batch_size` images at a time."""
        if output_dir is not None:
            raise ValueError("--output-dir is for segmentation checkpoints (masks); a classification checkpoint "
                             "prints its classes: leave --output-dir out")
        dev = next(net.parameters()).device
        data_cfg = preprocessing(net, img_size, crop_pct)
        tf = EvalTransform(data_cfg.input_size[-1], data_cfg.crop_pct, data_cfg.interpolation)
        mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
        for lo in range(0, len(images), batch_size):
            chunk = images[lo:lo + batch_size]
            x = torch.stack([tf(open_image(p, mode)) for p in chunk])  # a bad file raises, naming it
            probs = net(model_input(x, data_cfg, dev)).float().softmax(-1)
            p, i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            for path, pp, ii in zip(chunk, p.tolist(), i.tolist()):
                yield {"image": str(path), "top": [(names[j], float(q)) for q, j in zip(pp, ii)]}
