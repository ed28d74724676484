"""Detection on data: COCO's evaluation (pycocotools' COCOeval, through ``det_metrics``) of a detector over
evaluation batches, on every process's share, scored once over all of them.

Each batch's detections become COCO results at once (masks as RLE), so memory holds no full-size mask beyond one
batch. The ground truth is the annotation json itself for COCO-format data (crowd regions included, which COCOeval
ignores detections on), restricted to the evaluated images; for the scenes it is built from their targets.
Scores are in percent under lower-case names, ``box_`` (and ``mask_`` for Mask R-CNN) before COCO's twelve:
``ap``, ``ap50``, ``ap75``, ``aps``, ``apm``, ``apl``, ``ar1``, ``ar10``, ``ar100``, ``ars``, ``arm``, ``arl``
(-1 where COCO gives -1: no ground truth of that size); per-class AP by label, None for the background and for
a category without ground truth.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._utils import progress_bar
from .common import EvalResult
from .det_metrics import COCO_STATS, coco_evaluate, coco_ground_truth, coco_results
from .inputs import autocast

__all__ = ["evaluate_detection", "has_masks", "score_names", "BOX_SCORES", "MASK_SCORES"]

_KINDS = {"bbox": "box", "segm": "mask"}


def score_names(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{k.lower()}" for k in COCO_STATS)


BOX_SCORES, MASK_SCORES = score_names("box"), score_names("mask")


def has_masks(model: nn.Module) -> bool:
    """The detector predicts instance masks (torchvision's RoIHeads with a mask branch: Mask R-CNN)."""
    heads = getattr(model, "roi_heads", None)
    return bool(heads is not None and heads.has_mask())


def _gathered(local: tuple) -> list[tuple]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, local)
        return out
    return [local]


def _ground_truth(coco: dict | None, pieces: list[dict], image_ids: set) -> dict:
    """The evaluated images' ground truth, with each category named by its id (so that per-class AP is found by id
    whatever the names are)."""
    if coco is not None:
        gt = dict(coco, images=[im for im in coco["images"] if im["id"] in image_ids],
                  annotations=[a for a in coco["annotations"] if a["image_id"] in image_ids])
    else:  # the scenes: one piece per batch, their annotation ids made unique
        anns = [a for p in pieces for a in p["annotations"]]
        gt = dict(images=[im for p in pieces for im in p["images"]],
                  annotations=[dict(a, id=k + 1) for k, a in enumerate(anns)], categories=pieces[0]["categories"]
                  if pieces else [])
    gt["categories"] = [dict(c, name=str(c["id"])) for c in gt["categories"]]
    return gt


@torch.no_grad()
def evaluate_detection(model: nn.Module, batches, device: torch.device, amp: str = "none",
                       progress: bool = False) -> EvalResult:
    """COCO box (and mask) scores, per-class AP and the image count of `model` over `batches` (all processes; see the
    module docstring). ``loss`` is NaN: torchvision's detectors give no loss in eval mode."""
    items = batches.dataset
    was_training = model.training
    model.eval()
    masks = has_masks(model)
    results, pieces, ids = [], [], []
    for images, targets in progress_bar(batches.iterate(0), len(batches), "evaluating", progress):
        with autocast(device, amp):
            outputs = model([im.to(device, non_blocking=True) for im in images])
        preds = {t["image_id"]: {k: v.float() if v.is_floating_point() else v for k, v in o.items()}
                 for t, o in zip(targets, outputs)}
        results += coco_results(preds, items.cat_ids, masks=masks)
        ids += [t["image_id"] for t in targets]
        if items.coco is None:
            sizes = {t["image_id"]: tuple(im.shape[-2:]) for t, im in zip(targets, images)}
            pieces.append(coco_ground_truth({t["image_id"]: t for t in targets}, sizes, items.categories))
    model.train(was_training)
    gathered = _gathered((results, pieces, ids))
    results = [r for g in gathered for r in g[0]]
    pieces = [p for g in gathered for p in g[1]]
    ids = [i for g in gathered for i in g[2]]
    gt = _ground_truth(items.coco, pieces, set(ids))
    iou_types = ("bbox", "segm") if masks else ("bbox",)
    ev = coco_evaluate(gt, results, iou_types)
    scores, per_class = {}, {}
    for iou_type in iou_types:
        kind = _KINDS[iou_type]
        scores.update({f"{kind}_{k.lower()}": round(ev[iou_type][k], 4) for k in COCO_STATS})
        by_id = ev[iou_type]["per_class"]
        per_class[f"{kind}_ap"] = [None] + [None if by_id.get(str(c)) is None else round(by_id[str(c)], 4)
                                            for c in items.cat_ids]
    return EvalResult(scores, float("nan"), len(ids), per_class)
