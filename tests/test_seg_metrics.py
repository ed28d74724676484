"""Segmentation metrics: a confusion matrix worked out by hand, ignore pixels, undefined classes, logits at a lower
resolution, accumulation over batches and over two processes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qtvit
from qtvit.tasks.seg_metrics import SegmentationMetrics, scores_from_confusion

# 10 pixels, classes 0..2, two ignored (255):
#   (true, predicted): (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,0) [ignored] [ignored] (1,1)
LABELS = torch.tensor([[0, 0, 0, 1, 1], [2, 2, 255, 255, 1]])
PREDS = torch.tensor([[0, 0, 1, 1, 2], [2, 0, 2, 1, 1]])
# Confusion (rows true, columns predicted):  [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
#   row sums (labelled pixels) 3, 3, 2; column sums (predicted) 3, 3, 2
#   IoU  = 2 / (3 + 3 - 2) = 1/2,  2 / (3 + 3 - 2) = 1/2,  1 / (2 + 2 - 1) = 1/3  -> mIoU = 4/9
#   Acc  = 2/3, 2/3, 1/2  -> mAcc = 11/18;  aAcc = (2 + 2 + 1) / 8 = 5/8
EXPECTED = {"miou": 400 / 9, "macc": 1100 / 18, "aacc": 62.5, "iou": [50, 50, 100 / 3], "acc": [200 / 3, 200 / 3, 50]}


def _check(scores, expected=EXPECTED):
    for k, v in expected.items():
        assert scores[k] == pytest.approx(v, abs=1e-9), k


def test_hand_computed_case():
    m = SegmentationMetrics(3)
    m.update(PREDS[None], LABELS[None])
    assert m.confusion.compute().tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    scores = m.compute()
    _check(scores)
    assert scores["pixels"] == 8


def test_batches_accumulate_and_logits_are_argmaxed():
    m = SegmentationMetrics(3)
    for row in range(2):  # one image row per batch
        logits = 5 * torch.nn.functional.one_hot(PREDS[row:row + 1, None], 3).permute(0, 3, 1, 2).float()
        m.update(logits, LABELS[row:row + 1, None])
    _check(m.compute())
    m.reset()
    m.update(torch.zeros(1, 3, 2, 3).index_fill_(1, torch.tensor([1]), 1.0), torch.ones(1, 4, 6, dtype=torch.long))
    assert m.compute()["iou"][1] == 100  # logits at half resolution, resized to the labels' size
    with pytest.raises(ValueError, match="logits have 4 classes, the metric 3"):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index 1 is one of the 3 classes"):
        SegmentationMetrics(3, ignore_index=1)


def test_undefined_classes_are_left_out_of_the_means():
    c = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])  # class 3: no label, no prediction
    s = scores_from_confusion(c)
    _check({k: s[k] for k in ("miou", "macc", "aacc")}, {k: EXPECTED[k] for k in ("miou", "macc", "aacc")})
    _check({"iou": s["iou"][:3], "acc": s["acc"][:3]}, {"iou": EXPECTED["iou"], "acc": EXPECTED["acc"]})
    assert math.isnan(s["iou"][3]) and math.isnan(s["acc"][3])
    c[0, 3] = 1  # class 3 predicted once, never labelled: IoU 0 (counts), accuracy undefined
    s = scores_from_confusion(c)
    assert s["iou"][3] == 0 and math.isnan(s["acc"][3]) and s["miou"] == pytest.approx((50 + 40 + 100 / 3) / 4)


_TWO_RANKS = textwrap.dedent("""
    import json, sys
    import torch
    from qtvit.tasks.seg_metrics import SegmentationMetrics
    torch.set_num_threads(1)
    labels, preds = torch.tensor({labels}), torch.tensor({preds})

    def rank(r):
        torch.distributed.init_process_group("gloo", init_method={init!r}, rank=r, world_size=2)
        m = SegmentationMetrics(3)
        m.update(preds[r:r + 1], labels[r:r + 1])  # each process sees one row
        scores = m.compute()
        torch.distributed.destroy_process_group()
        with open({out!r} + str(r) + ".json", "w") as f:
            json.dump(scores, f)

    # Forked from this fresh process (nothing run yet): one interpreter start for both ranks.
    ctx = torch.multiprocessing.get_context("fork")
    procs = [ctx.Process(target=rank, args=(r,)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    sys.exit(sum(abs(p.exitcode or 0) for p in procs) + sum(p.exitcode is None for p in procs))
""")


def test_two_processes_sum_their_confusion(tmp_path):
    out = str(tmp_path / "scores")
    script = _TWO_RANKS.format(labels=LABELS.tolist(), preds=PREDS.tolist(), init=f"file://{tmp_path / 'rdv'}",
                               out=out)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(qtvit.__file__).parents[1]), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for rank in range(2):  # each rank's scores are those of both rows: the confusion was summed
        with open(f"{out}{rank}.json") as f:
            _check(json.load(f))
