"""COCO detection metrics: detector outputs -> COCO results -> pycocotools' COCOeval, as the papers report them.

``coco_results`` turns torchvision-format predictions (``boxes`` xyxy, ``scores``, ``labels`` 1..K, optional
``masks`` (N, 1, H, W) probabilities) into COCO's results format (``bbox`` [x, y, w, h], the category id, and for
masks an RLE of the mask thresholded at ``mask_threshold`` and ``mask_score``, the score times the mask's mean
probability over its pixels: SOLOv2's "maskness", by which ``coco_evaluate`` ranks the masks; ``score`` ranks the
boxes); ``write_coco_results`` writes that list as the json
file COCO's evaluation server and ``COCO.loadRes`` read. ``coco_evaluate`` runs COCOeval on them for boxes
("bbox") and masks ("segm") and returns, in percent as the QT-ViT paper's Tables 4-5:

- the twelve numbers of ``COCOeval.summarize`` under their usual names (``AP``, ``AP50``, ``AP75``, ``APs``,
  ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``): -1 where COCO gives -1 (no ground
  truth of that size);
- ``per_class``: AP (IoU 0.50:0.95, all areas, 100 detections) of each category, by name; None for a category
  without ground truth.

``coco_ground_truth`` builds a COCO ground-truth dict from torchvision-format targets (the scenes' instances have
no json of their own).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .._io import write_text

__all__ = ["COCO_STATS", "coco_evaluate", "coco_ground_truth", "coco_results", "write_coco_results"]

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _pycocotools():
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO evaluation needs pycocotools: pip install 'qtvit[detect]'") from e
    return COCO, COCOeval, mask


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = _pycocotools()[2].encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii"))


def coco_results(predictions: Mapping[Any, Mapping[str, torch.Tensor]], cat_ids: Sequence[int], *,
                 masks: bool = True, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """``{image_id: prediction}`` -> COCO results (one dict per detection); label k is category ``cat_ids[k - 1]``.
    Masks are written when ``masks`` and the predictions have them."""
    out = []
    for image_id, pred in predictions.items():
        boxes = pred["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        labels, scores = pred["labels"].cpu().tolist(), pred["scores"].detach().float().cpu().tolist()
        bad = [k for k in labels if not 1 <= k <= len(cat_ids)]
        if bad:
            raise ValueError(f"image {image_id}: labels {sorted(set(bad))} outside 1..{len(cat_ids)} (the detector "
                             f"has more classes than the {len(cat_ids)} categories given)")
        mask_probs = pred.get("masks") if masks else None
        for n, ((x1, y1, x2, y2), label, score) in enumerate(zip(boxes.tolist(), labels, scores)):
            r = dict(image_id=image_id, category_id=int(cat_ids[label - 1]), score=float(score),
                     bbox=[x1, y1, x2 - x1, y2 - y1])
            if mask_probs is not None:
                probs = mask_probs[n, 0].detach().float().cpu().numpy()
                on = probs > mask_threshold
                r["segmentation"] = _rle(on)
                # the box's score times the mask's mean confidence over its pixels (SOLOv2's "maskness"): the
                # masks are ranked by how sure the mask is as well as the box
                r["mask_score"] = float(score * probs[on].mean()) if on.any() else 0.0
            out.append(r)
    return out


def write_coco_results(path: str | os.PathLike, results: list[dict[str, Any]]):
    """The results as COCO's results json (atomically)."""
    return write_text(path, json.dumps(results))


def coco_ground_truth(targets: Mapping[Any, Mapping[str, torch.Tensor]], image_sizes: Mapping[Any, tuple[int, int]],
                      categories: Sequence[str]) -> dict[str, Any]:
    """A COCO ground-truth dict from ``{image_id: target}`` (``boxes`` xyxy, ``labels`` 1..K, optional ``masks``)
    and ``{image_id: (height, width)}``; category k is ``categories[k - 1]`` with id k."""
    images, anns = [], []
    for image_id, t in targets.items():
        h, w = image_sizes[image_id]
        images.append(dict(id=image_id, height=int(h), width=int(w), file_name=f"{image_id}"))
        masks = t.get("masks")
        for n, ((x1, y1, x2, y2), label) in enumerate(zip(t["boxes"].tolist(), t["labels"].tolist())):
            ann = dict(id=len(anns) + 1, image_id=image_id, category_id=int(label), iscrowd=0,
                       bbox=[x1, y1, x2 - x1, y2 - y1], area=float((x2 - x1) * (y2 - y1)))
            if masks is not None:
                m = masks[n].cpu().numpy() > 0
                ann["segmentation"], ann["area"] = _rle(m), float(m.sum())
            anns.append(ann)
    cats = [dict(id=k + 1, name=name) for k, name in enumerate(categories)]
    return dict(images=images, annotations=anns, categories=cats)


def _coco(data: dict[str, Any]):
    coco = _pycocotools()[0]()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _per_class(evaluator, names: Mapping[int, str]) -> dict[str, float | None]:
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); -1 where undefined
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        out[names[cat_id]] = float(p[p > -1].mean() * 100) if (p > -1).any() else None
    return out


def _as_mask_result(r: dict[str, Any]) -> dict[str, Any]:
    """A result as COCOeval scores its mask: without its box, ranked by its mask's score where it has one."""
    out = {k: v for k, v in r.items() if k not in ("bbox", "mask_score")}
    out["score"] = r.get("mask_score", r["score"])
    return out


def coco_evaluate(ground_truth: dict[str, Any], results: list[dict[str, Any]],
                  iou_types: Iterable[str] = ("bbox", "segm")) -> dict[str, dict[str, Any]]:
    """COCOeval of ``results`` against ``ground_truth`` (a COCO-format dict) for each of ``iou_types``:
    ``{"bbox": {"AP": ..., ..., "per_class": {...}}, "segm": {...}}`` (see the module docstring)."""
    COCO, COCOeval, _ = _pycocotools()
    # COCOeval rewrites the annotations it reads (their segmentation becomes RLE): it gets copies, the caller's
    # dict (a dataset's own json, say) stays as it was
    gt = _coco(dict(ground_truth, annotations=[dict(a) for a in ground_truth.get("annotations", [])]))
    names = {c["id"]: c.get("name", str(c["id"])) for c in ground_truth["categories"]}
    out = {}
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
            # Masks are scored without their boxes, so that loadRes takes a detection's area (COCO's small, medium,
            # large) from its mask, as for the ground truth; with the box there it would take the box's.
            # They are ranked by their own score ("mask_score") where the results have one.
            res = results if iou_type != "segm" else [_as_mask_result(r) for r in results]
            # COCO.loadRes refuses an empty list; a results set with no detection is what that list means
            dt = gt.loadRes(res) if res else _coco(dict(ground_truth, annotations=[]))
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = {k: float(v * 100) if v >= 0 else -1.0 for k, v in zip(COCO_STATS, evaluator.stats)}
        out[iou_type] = dict(stats, per_class=_per_class(evaluator, names))
    return out
