"""COCO AP through pycocotools against a case computed by hand, the results format and its writer."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pycocotools")
from qtvit.tasks.det_metrics import (COCO_STATS, coco_evaluate, coco_ground_truth, coco_results,  # noqa: E402
                                     write_coco_results)

S = 64  # image side
CAT_IDS = [3, 7]  # non-contiguous: label 1 -> category 3 ("car"), label 2 -> 7 ("dog")


def _masks(boxes, prob_in=1.0, prob_out=0.0, channel=False):
    m = torch.full((len(boxes), S, S), prob_out)
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        m[n, y1:y2, x1:x2] = prob_in
    return m[:, None] if channel else m


def _case():
    gt_boxes = {1: [[0, 0, 10, 10], [20, 20, 30, 30]], 2: [[5, 5, 25, 25]]}
    targets = {i: dict(boxes=torch.tensor(b, dtype=torch.float32), labels=torch.tensor([1] * len(b) if i == 1 else [2]),
                       masks=_masks(b).to(torch.uint8)) for i, b in gt_boxes.items()}
    ground_truth = coco_ground_truth(targets, {1: (S, S), 2: (S, S)}, ["car", "dog"])
    for ann in ground_truth["annotations"]:  # the file's ids, not the labels
        ann["category_id"] = CAT_IDS[ann["category_id"] - 1]
    for cat, cid in zip(ground_truth["categories"], CAT_IDS):
        cat["id"] = cid
    # image 1, car: an exact hit (0.9), a false positive (0.8), a hit of IoU 100 / 160 = 0.625 (0.7)
    # image 2, dog: an exact hit (0.6)
    pred_boxes = {1: [[0, 0, 10, 10], [40, 0, 50, 10], [20, 20, 30, 36]], 2: [[5, 5, 25, 25]]}
    predictions = {i: dict(boxes=torch.tensor(b, dtype=torch.float32),
                           scores=torch.tensor([0.9, 0.8, 0.7] if i == 1 else [0.6]),
                           labels=torch.tensor([1, 1, 1] if i == 1 else [2]),
                           masks=_masks(b, 0.9, 0.1, channel=True)) for i, b in pred_boxes.items()}
    return ground_truth, predictions


def test_ap_matches_the_hand_computed_case():
    ground_truth, predictions = _case()
    scores = coco_evaluate(ground_truth, coco_results(predictions, CAT_IDS))
    # By hand, car: ranked hits / misses at an IoU threshold t <= 0.625 (t = .50, .55, .60): hit, miss, hit ->
    # precision 1 up to recall 1/2, then 2/3 up to recall 1; COCO's 101 recall points: 51 at 1, 50 at 2/3.
    # At t >= .65 the third is a miss too: 51 points at 1, recall never above 1/2.
    car_loose, car_strict = (51 + 50 * 2 / 3) / 101, 51 / 101
    car = (3 * car_loose + 7 * car_strict) / 10
    dog = 1.0  # one exact hit
    for iou_type in ("bbox", "segm"):  # the masks are the boxes' rectangles: the same numbers
        s = scores[iou_type]
        assert list(s)[:12] == list(COCO_STATS)
        assert s["AP"] == pytest.approx(100 * (car + dog) / 2, abs=1e-6)
        assert s["AP50"] == pytest.approx(100 * (car_loose + dog) / 2, abs=1e-6)
        assert s["AP75"] == pytest.approx(100 * (car_strict + dog) / 2, abs=1e-6)
        assert s["APs"] == pytest.approx(s["AP"]) and s["APm"] == s["APl"] == -1  # every object is small (< 32^2)
        # recall with 100 (or 10) detections: car 1 at three thresholds, 1/2 at seven; with 1 per image: 1/2
        assert s["AR100"] == s["AR10"] == pytest.approx(100 * ((3 + 7 * 0.5) / 10 + 1) / 2, abs=1e-6)
        assert s["AR1"] == pytest.approx(100 * (0.5 + 1) / 2, abs=1e-6)
        assert s["per_class"]["car"] == pytest.approx(100 * car, abs=1e-6)
        assert s["per_class"]["dog"] == pytest.approx(100)


def test_results_format_writer_and_edge_cases(tmp_path):
    ground_truth, predictions = _case()
    results = coco_results(predictions, CAT_IDS)
    assert len(results) == 4 and results[2]["bbox"] == [20, 20, 10, 16] and results[2]["category_id"] == 3
    assert results[3]["category_id"] == 7 and results[0]["image_id"] == 1 and results[0]["score"] == pytest.approx(0.9)
    assert results[0]["segmentation"]["size"] == [S, S] and isinstance(results[0]["segmentation"]["counts"], str)
    path = write_coco_results(tmp_path / "res.json", results)
    assert json.loads(path.read_text()) == results
    assert "segmentation" not in coco_results(predictions, CAT_IDS, masks=False)[0]
    nothing = coco_evaluate(ground_truth, [], iou_types=("bbox",))["bbox"]
    assert nothing["AP"] == 0 and nothing["AR100"] == 0 and nothing["per_class"] == dict(car=0, dog=0)
    missing = dict(ground_truth, categories=ground_truth["categories"] + [dict(id=9, name="cow")])
    assert coco_evaluate(missing, results, iou_types=("bbox",))["bbox"]["per_class"]["cow"] is None
    predictions[2]["labels"] = torch.tensor([3])
    with pytest.raises(ValueError, match=r"image 2: labels \[3\] outside 1..2"):
        coco_results(predictions, CAT_IDS)


def test_masks_are_ranked_by_score_times_maskness():
    ground_truth, predictions = _case()
    # image 1's false positive (score 0.8) now has an unsure mask (0.55 inside): 0.8 x 0.55 = 0.44 ranks it below
    # the partial hit's 0.7 x 0.9 = 0.63 for the masks, not for the boxes
    predictions[1]["masks"][1] = _masks([[40, 0, 50, 10]], 0.55, 0.1, channel=True)[0]
    results = coco_results(predictions, CAT_IDS)
    assert [r["mask_score"] for r in results] == pytest.approx([0.81, 0.44, 0.63, 0.54])
    assert results[1]["score"] == pytest.approx(0.8)  # the box keeps its score
    scores = coco_evaluate(ground_truth, results)
    # masks, car: hit, hit (IoU 0.625), miss -> precision 1 up to recall 1 at t <= .60; at t >= .65 as before
    car_segm = (3 * 1 + 7 * 51 / 101) / 10
    car_bbox = (3 * (51 + 50 * 2 / 3) / 101 + 7 * 51 / 101) / 10
    assert scores["segm"]["AP"] == pytest.approx(100 * (car_segm + 1) / 2, abs=1e-6)
    assert scores["bbox"]["AP"] == pytest.approx(100 * (car_bbox + 1) / 2, abs=1e-6)
    empty = dict(predictions[2], masks=torch.zeros(1, 1, S, S))  # a mask with no pixel above the threshold
    assert coco_results({2: empty}, CAT_IDS)[0]["mask_score"] == 0
