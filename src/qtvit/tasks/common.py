"""What every task shares: the typed result of an evaluation, and what a saved model says about itself (its class
count, input channels, preprocessing and class names), read by validation and prediction."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..checkpoints import model_config
from ..data import DataConfig, resolve_data_config

__all__ = ["EvalResult", "check_evaluated", "classes_and_channels", "preprocessing", "saved_class_names",
           "check_classes"]


@dataclass
class EvalResult:
    """One evaluation over a dataset (all processes). `scores`: the task's scores by the names they keep in the
    metrics row, summary.json and the printed line (``top1``/``top5``, ``miou``/``macc``/``aacc``, ``box_ap``...),
    percent; `loss`: the mean cross-entropy (per image, or per labelled pixel; NaN for detection, whose models give
    none in eval mode); `images`: how many were evaluated; `per_class`: lists of one value per class by score name
    (``iou``, ``acc``, ``box_ap``, ``mask_ap``; None where undefined), written to
    per_class.csv under those names and to summary.json as ``per_class_<name>``."""
    scores: dict[str, float]
    loss: float
    images: int
    per_class: dict[str, list] = field(default_factory=dict)

    def __getitem__(self, key: str):  # a score by name, as the metric picks it
        return self.scores[key]

    def as_dict(self, class_names: list[str]) -> dict:
        """The scores, per-class values by class name (``per_class_<name>``), ``loss`` and ``images``."""
        named = {f"per_class_{k}": dict(zip(class_names, v)) for k, v in self.per_class.items()}
        return {**self.scores, **named, "loss": self.loss, "images": self.images}


def check_evaluated(r: EvalResult, batches) -> EvalResult:
    """`r`, an evaluation's result, unless it evaluated no image: scores of nothing (0 %, or NaN) are an error."""
    if r.images == 0:
        skipped = getattr(batches, "num_skipped", 0)
        raise ValueError(f"no image could be evaluated: the evaluation data held {skipped} unreadable image(s) "
                         "(skipped) and nothing else; check the dataset's evaluation split")
    return r


# ----------------------------------------------------------------------------------------------- a saved model
def classes_and_channels(net: nn.Module) -> tuple[int, int]:
    """(classes, input channels) of a loaded model: as recorded, else from one forward pass of a blank image."""
    args, pcfg = model_config(net)["model_args"], net.pretrained_cfg
    size = pcfg.get("input_size") or (3, 224, 224)
    in_chans = args.get("in_chans") or size[0]
    num_classes = args.get("num_classes") or pcfg.get("num_classes")
    if not num_classes:
        with torch.no_grad():
            dev = next(net.parameters()).device
            out = net(torch.zeros(1, in_chans, size[-2], size[-1], device=dev))
            out = out[0] if isinstance(out, (tuple, list)) else out
            num_classes = out.shape[1]  # (B, classes) or per-pixel (B, classes, h, w)
    return int(num_classes), int(in_chans)


def preprocessing(net: nn.Module, img_size: int | None = None, crop_pct: float | None = None, dataset_mean=None,
                  dataset_std=None) -> DataConfig:
    """The input a saved model was trained on (its recorded preprocessing), `img_size` / `crop_pct` when given."""
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct {crop_pct} is outside (0, 1]; pass a crop ratio such as 0.875 or 1")
    if img_size is not None and img_size < 1:
        raise ValueError(f"img_size {img_size} is not a positive image side; pass e.g. 224")
    return resolve_data_config(net, classes_and_channels(net)[1], img_size, crop_pct,
                               dataset_mean=dataset_mean, dataset_std=dataset_std)


def saved_class_names(net: nn.Module, num_classes: int) -> list[str]:
    """A saved model's class names (``label_names``, written from the dataset it was trained on), numbered past
    those it records."""
    names = list(net.pretrained_cfg.get("label_names") or [])
    return names + [str(i) for i in range(len(names), num_classes)]


def check_classes(net: nn.Module, classes: list[str], num_classes: int) -> None:
    """A dataset validated against a saved model must be the one it was trained for (its classes a prefix)."""
    if len(classes) > num_classes:
        raise ValueError(f"the dataset has {len(classes)} classes, the checkpoint {num_classes}; "
                         "validate on the dataset the model was trained for")
    names = net.pretrained_cfg.get("label_names")
    if names and list(names[:len(classes)]) != list(classes):
        raise ValueError(f"the dataset's classes {classes[:5]}... differ from the checkpoint's "
                         f"{list(names[:5])}...; validate on the dataset the model was trained for")
