"""Semantic segmentation: its data (the Fashion-MNIST scenes, ADE20K, Cityscapes, folders of image/mask pairs),
photometric jitter of the images (masks untouched), per-pixel cross-entropy with the dataset's ignored pixels left
out plus UperNet's auxiliary loss, mIoU; a saved model's validation (flip and multi-scale tests) and its masks of
image files (seg_evaluate.py, seg_predict.py)."""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataConfig, Shard
from ..data.detection import looks_like_coco
from ..data.segmentation import IGNORE_INDEX, SCENES, build_segmentation_batches, open_segmentation
from ..data.seg_transforms import SegBatchAugment, check_scales
from ..options import OptionError
from .common import EvalResult, preprocessing
from .seg_evaluate import evaluate_segmentation
from .seg_metrics import main_logits, upsample_logits
from .seg_predict import segment_images

__all__ = ["Segmentation", "hard_pixels", "eval_batch_size", "eval_short_side", "segmentation_eval_batches"]

_CLASSIFICATION_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist")


class _WithAux(nn.Module):
    """In training, ``model.forward_with_aux(x)``: (logits, aux_logits) for the auxiliary loss; in eval, ``model(x)``.
    A module of its own so that DDP, which wraps it, runs its hooks around the forward that is used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_aux(x) if self.training else self.model(x)


class Segmentation:
    """Semantic segmentation: photometric jitter of the images (masks untouched), per-pixel cross-entropy on the
    logits resized to the mask (plus `aux_weight` x that of the auxiliary logits when the model gives them), mIoU."""

    name = "segmentation"
    metric = "miou"
    scores = ("miou", "macc", "aacc")
    resizes_pos_embed = False  # its models take no pos_embed_size

    def __init__(self, num_classes: int, data_cfg: DataConfig, cfg, info=None):
        ignore_index = info.ignore_index if info is not None else IGNORE_INDEX  # the dataset says which label
        if num_classes > ignore_index:  # the label that marks unlabelled pixels cannot also be a class
            raise ValueError(f"--num-classes {num_classes}: segmentation labels 0-{ignore_index - 1} are classes and "
                             f"{ignore_index} is the ignore label (unlabelled pixels), so at most {ignore_index} "
                             "classes fit; give fewer")
        self.num_classes, self.data_cfg, self.cfg, self.amp = num_classes, data_cfg, cfg, cfg.amp
        self.ignore_index, self.aux_weight = ignore_index, cfg.aux_weight
        self.augment = SegBatchAugment(data_cfg.mean, data_cfg.std, jitter=cfg.seg_jitter)

    # ------------------------------------------------------------------------------------------- data and options
    @staticmethod
    def open_data(data: str | os.PathLike | None, num_classes: int | None = None):
        """The dataset `data` names (see ``data.open_segmentation``; a folder of image/mask pairs without
        classes.txt has `num_classes`: --num-classes, or a checkpoint's); a classification dataset is refused."""
        if data is not None and str(data).lower() in _CLASSIFICATION_NAMES:
            raise ValueError(f"--task segmentation: --data {data} is a classification dataset; leave --data out (or "
                             f"pass {SCENES}) for the Fashion-MNIST scenes, or pass an ADE20K, Cityscapes or "
                             "image/mask folder")
        if data is not None and looks_like_coco(data):
            raise ValueError(f"--task segmentation: --data {data} is a detection dataset (COCO format); pass --task "
                             "detection to train on it")
        try:
            return open_segmentation(data, default_num_classes=num_classes)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"--task segmentation: {e}") from None

    @staticmethod
    def check_config(cfg) -> None:
        # image-level mixing and erasing have no per-pixel meaning here
        used = tuple(k for k in ("mixup", "cutmix", "randaug_n", "reprob", "bce") if getattr(cfg, k))
        if used:
            raise OptionError(used, "are for classification only; segmentation augments with random scale, crop, "
                              "flip and photometric jitter: leave them out")

    @staticmethod
    def recorded(cfg, info) -> dict:
        """The evaluation size of the run (--eval-size), which validation and prediction use again."""
        return {"eval_short_side": cfg.eval_size} if cfg.eval_size else {}

    @staticmethod
    def batches(cfg, info, data_cfg: DataConfig, shard: Shard):
        """(training, evaluation, BN re-estimation or None) batches of a run: --img-size is the training crop;
        evaluation follows the dataset's protocol (labels at their own size), its images resized to --eval-size
        when given. `shard`: this process's part."""
        common = dict(crop_size=data_cfg.input_size[-1], shard=shard)
        crops = dict(limit=cfg.limit_train, hflip=cfg.hflip, ratio_range=tuple(cfg.scale_range),
                     scene_items=tuple(cfg.scene_items))
        train = build_segmentation_batches(info, train=True, batch_size=cfg.batch_size, **crops, **common)
        evals = build_segmentation_batches(info, train=False, batch_size=eval_batch_size(info, cfg.eval_batch_size),
                                           limit=cfg.limit_eval, eval_short_side=cfg.eval_size, **common)
        bn = None
        if cfg.bn_reestimate_images > 0:  # training crops, as the classification task's re-estimation
            bn = build_segmentation_batches(info, train=True,
                                            batch_size=min(cfg.bn_reestimate_batch, train.num_samples),
                                            **crops, **common)
        return train, evals, bn

    # ------------------------------------------------------------------------------------------- a training step
    def train_module(self, model: nn.Module) -> nn.Module:
        return _WithAux(model) if hasattr(model, "forward_with_aux") else model

    def batch(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, gen: torch.Generator):
        # uint8 in, jittered and normalised float out; the jitter draws from the global torch RNG (in checkpoints)
        x = self.augment(x.to(device, non_blocking=True))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The head's stride (4, 8, 16) is undone on the logits, bilinearly as mmseg and EfficientViT train, so the
        # loss sees every labelled pixel of the crop.
        logits = upsample_logits(logits, target.shape[-2:], "bilinear")
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        kept = target != self.ignore_index
        if self.cfg.ohem > 0:
            kept = hard_pixels(loss.detach(), kept, self.cfg.ohem)
        # The mean over the kept pixels (torch's "mean"), but 0 rather than NaN for a crop with none labelled.
        return (loss * kept).sum() / kept.sum().clamp(min=1)

    def loss(self, output, target: torch.Tensor) -> torch.Tensor:
        logits = main_logits(output, self.cfg.model)
        loss = self._cross_entropy(logits, target)
        aux = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if aux is not None:  # even at weight 0: DDP needs every parameter in the graph (a zero gradient is fine)
            loss = loss + self.aux_weight * self._cross_entropy(aux, target)
        return loss

    def evaluate(self, model: nn.Module, batches, device: torch.device) -> EvalResult:
        return evaluate_segmentation(model, batches, self.data_cfg, device, self.num_classes, self.amp,
                                     self.cfg.channels_last, self.ignore_index)

    # ------------------------------------------------------------------------------------------- a saved model
    @staticmethod
    def validate(net: nn.Module, info, num_classes: int, dist, *, batch_size=None, img_size=None, crop_pct=None,
                 amp="none", limit=None, workers=4, flip=False, scales=(1.0,)) -> tuple[EvalResult, object, dict]:
        """(result, batches, extra fields of validate's answer) of a saved segmentation model on `info`'s eval
        split, with the dataset's evaluation protocol."""
        _no_crop_pct(crop_pct)
        # Segmentation batches are images and per-pixel outputs at full size: a few at a time run faster on a CPU
        # than hundreds (measured on the scenes: 8 took 19.5 s where 32 took 30.5 s, most of it the system's page
        # faults).
        data_cfg, batches = segmentation_eval_batches(net, info, batch_size=eval_batch_size(info, batch_size or 8),
                                                      limit=limit, img_size=img_size, scales=scales,
                                                      shard=Shard(rank=dist.rank, world=dist.world, workers=workers))
        r = evaluate_segmentation(net, batches, data_cfg, dist.device, num_classes, amp, ignore_index=info.ignore_index,
                                  flip=flip, progress=dist.is_main)
        return r, batches, {"flip": flip, "scales": list(check_scales(scales))}

    @staticmethod
    def describe(r: dict) -> str:
        """The scores as `qtvit validate` prints them."""
        return f"mIoU {r['miou']:.2f}%  mAcc {r['macc']:.2f}%  aAcc {r['aacc']:.2f}%"

    @staticmethod
    def predict(net: nn.Module, images: list, names: list[str], *, topk: int = 5, batch_size: int = 64,
                img_size=None, crop_pct=None, output_dir=None, overwrite: bool = False):
        """Each image's colour mask and overlay written into `output_dir` (see seg_predict.segment_images)."""
        if output_dir is None:
            raise ValueError("a segmentation checkpoint predicts masks: pass --output-dir, the folder to write "
                             "each image's <name>_mask.png and <name>_overlay.png to")
        _no_crop_pct(crop_pct)
        return segment_images(net, images, output_dir, preprocessing(net), names, eval_short_side(net, img_size),
                              overwrite=overwrite)


def _no_crop_pct(crop_pct: float | None) -> None:
    if crop_pct is not None:
        raise ValueError("--crop-pct is for classification checkpoints; a segmentation model sees the whole image "
                         "(--img-size resizes its short side): leave --crop-pct out")


def eval_batch_size(info, batch_size: int) -> int:
    """`batch_size`, or 1 where the evaluation images keep sizes of their own (ADE20K's short side at 512 with the
    aspect kept, folders at their own sizes): such images cannot share a batch, and the official evaluation runs
    them one at a time too. The scores are the same either way; only the speed differs."""
    same_size = info.kind == SCENES or info.eval_size is not None
    return batch_size if same_size else 1


def eval_short_side(net: nn.Module, img_size: int | None = None) -> int | None:
    """The short side a segmentation model's evaluation images are resized to: `img_size` when given, else the one
    its training evaluated at (``--eval-size``, saved with the weights), else None (the dataset's protocol)."""
    return img_size or net.pretrained_cfg.get("eval_short_side")


def segmentation_eval_batches(net: nn.Module, info, *, batch_size: int, shard: Shard = Shard(),
                              limit: int | None = None, img_size: int | None = None,
                              scales: tuple[float, ...] = (1.0,)):
    """(DataConfig, evaluation batches) of a segmentation model on the dataset `info`, as `validate` scores it: the
    saved preprocessing with the dataset's mean and std, the images resized to ``eval_short_side`` (times each of
    `scales`: one view per scale)."""
    data_cfg = preprocessing(net, None, None, info.mean, info.std)
    batches = build_segmentation_batches(info, train=False, crop_size=data_cfg.input_size[-1], batch_size=batch_size,
                                         shard=shard, limit=limit, eval_short_side=eval_short_side(net, img_size),
                                         eval_scales=scales)
    return data_cfg, batches


def hard_pixels(pixel_loss: torch.Tensor, labelled: torch.Tensor, threshold: float,
                min_fraction: float = 1 / 16) -> torch.Tensor:
    """mmseg's OHEM pixel sampler: the labelled pixels whose own class has probability below `threshold`, or, when
    fewer are that hard, the `min_fraction` of labelled pixels with the lowest probability (so easy background does
    not fill the mean, and a batch of easy pixels still trains). `pixel_loss` is the per-pixel cross-entropy,
    -log p(own class)."""
    hard = labelled & (pixel_loss > -math.log(threshold))
    min_kept = int(min_fraction * labelled.sum())
    if hard.sum() < min_kept:  # by rank, so ties (p = 1 in float32) cannot keep them all
        ranked = torch.where(labelled, pixel_loss, -1.0).flatten().topk(min_kept).indices
        hard = torch.zeros_like(labelled).flatten().index_fill_(0, ranked, True).view_as(labelled)
    return hard


