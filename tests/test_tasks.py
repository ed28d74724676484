"""The tasks package: one lookup (by name, or the task a model declares), the typed evaluation result, and no
task-name comparison anywhere else in the library (checked by parsing the code, lazy imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch.nn as nn

from qtvit.checkpoints import CheckpointError
from qtvit.tasks import TASKS, Classification, Detection, EvalResult, Segmentation, get_task, task_of

SRC = Path(__file__).resolve().parents[1] / "src" / "qtvit"
_NAMES = {"classification", "segmentation", "detection"}


def test_the_lookup_by_name_and_by_model():
    assert get_task("classification") is Classification and get_task("segmentation") is Segmentation
    assert get_task("detection") is Detection
    assert set(TASKS) == {"classification", "segmentation", "detection"}
    with pytest.raises(ValueError, match="task 'segmentaton': use classification, segmentation, detection"):
        get_task("segmentaton")
    plain = nn.Linear(2, 2)  # no pretrained_cfg: a classifier, as older files
    assert task_of(plain) is Classification
    plain.pretrained_cfg = {"task": "segmentation"}
    assert task_of(plain) is Segmentation
    plain.pretrained_cfg = {"task": "detection"}
    assert task_of(plain) is Detection
    plain.pretrained_cfg = {"task": "keypoints"}
    with pytest.raises(CheckpointError, match="task 'keypoints', which this qtvit does not know"):
        task_of(plain)


def test_a_segmentation_model_declares_its_task():
    import qtvit
    net = qtvit.create_model("qtvit_seg_1_ade20k", num_classes=3)
    assert task_of(net) is Segmentation


def test_an_evaluation_result_keeps_its_names_to_the_answer():
    r = EvalResult({"miou": 40.0, "macc": 50.0, "aacc": 90.0}, 0.5, 4, {"iou": [30.0, None], "acc": [60.0, 40.0]})
    assert r["miou"] == 40.0
    assert r.as_dict(["bg", "fg"]) == {"miou": 40.0, "macc": 50.0, "aacc": 90.0,
                                       "per_class_iou": {"bg": 30.0, "fg": None},
                                       "per_class_acc": {"bg": 60.0, "fg": 40.0}, "loss": 0.5, "images": 4}


def _task_name_comparisons(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.match_case):
            parts = [node.pattern]
        else:
            continue
        consts = [n.value for p in parts for n in ast.walk(p) if isinstance(n, ast.Constant)]
        if any(isinstance(c, str) and c in _NAMES for c in consts):
            lines.append(node.lineno if hasattr(node, "lineno") else node.pattern.lineno)
    return lines


def test_no_task_name_comparison_outside_the_tasks_package():
    found = {str(p.relative_to(SRC)): lines for p in sorted(SRC.rglob("*.py"))
             if "tasks" not in p.relative_to(SRC).parts for lines in [_task_name_comparisons(p)] if lines}
    assert found == {}, f"task names compared outside qtvit/tasks (use qtvit.tasks.get_task / task_of): {found}"
    assert _task_name_comparisons(SRC / "tasks" / "__init__.py") == []  # the lookup itself goes by the registry
