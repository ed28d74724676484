"""Detection through the one training loop and the CLI: a COCO-layout set made here (polygons, compressed and
uncompressed RLE, a crowd region, an image without objects, category ids 3, 7, 12, JPEG and PNG) trains two steps
and validates as JSON (the acceptance test of issue 24), exact resume, predictions drawn and written as COCO results
with the dataset's own category ids, and clear errors for a wrong dataset, task or class count. Tiny detectors
(tests/_tiny_detector.py, or maskrcnn_qtvit_1 at 64 px) on tiny images."""
from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
from pycocotools import mask as mask_api  # noqa: E402

from _tiny_detector import register_tiny_detectors  # noqa: E402
from conftest import SMALL_FMNIST, run_two_processes, tiny_config  # noqa: E402
from test_data_coco import _rle_of, _uncompressed_rle  # noqa: E402
from qtvit import create_model  # noqa: E402
from qtvit.checkpoints import latest_checkpoint, save_weights  # noqa: E402
from qtvit.cli import main  # noqa: E402
from qtvit.data import Shard  # noqa: E402
from qtvit.data.detection import build_detection_batches, open_detection  # noqa: E402
from qtvit.tasks import Detection  # noqa: E402
from qtvit.tasks.det_evaluate import BOX_SCORES, MASK_SCORES  # noqa: E402
from qtvit.train import load_model, make_config, train, validate  # noqa: E402

H, W = 64, 80
CATEGORIES = [dict(id=12, name="kite"), dict(id=3, name="car"), dict(id=7, name="train")]  # not in id order
SMALL_QTVIT1 = ["min_size=64", "max_size=96", "fpn_channels=32", "anchor_sizes=[8,16,32,64,128]",
                "box_batch_size_per_image=32", "rpn_post_nms_top_n_train=50", "box_detections_per_img=20"]
COLOURS = {3: (220, 40, 40), 7: (40, 220, 40), 12: (40, 40, 220)}


@pytest.fixture(scope="module", autouse=True)
def tiny_detectors():
    from qtvit.models import unregister_model
    names = register_tiny_detectors()
    yield
    for name in names:
        unregister_model(name)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _ann(ann_id, image_id, cat, box, segmentation, crowd=0) -> dict:
    x0, y0, x1, y1 = box
    return dict(id=ann_id, image_id=image_id, category_id=cat, bbox=[x0, y0, x1 - x0, y1 - y0], iscrowd=crowd,
                area=float((x1 - x0) * (y1 - y0)), segmentation=segmentation)


def _split(first_id: int) -> tuple[list, list]:
    """Three images (a JPEG with a polygon and a compressed RLE; a PNG with an uncompressed RLE and a crowd region;
    an empty PNG) and their annotations."""
    a, b, c = first_id, first_id + 1, first_id + 2
    images = [dict(id=a, file_name=f"{a:012d}.jpg", height=H, width=W),
              dict(id=b, file_name=f"{b:012d}.png", height=H, width=W),
              dict(id=c, file_name=f"{c:012d}.png", height=H, width=W)]
    anns = [_ann(10 * a + 1, a, 3, (4, 6, 30, 40), [[4, 6, 30, 6, 30, 40, 4, 40]]),
            _ann(10 * a + 2, a, 12, (40, 10, 76, 60), _rle_of(_rect(40, 10, 76, 60))),
            _ann(10 * b + 1, b, 7, (8, 8, 50, 30), _uncompressed_rle(_rect(8, 8, 50, 30))),
            _ann(10 * b + 2, b, 3, (10, 40, 70, 62), _uncompressed_rle(_rect(10, 40, 70, 62)), crowd=1)]
    return images, anns


def _draw(folder, images, anns) -> None:
    folder.mkdir(parents=True)
    for im in images:
        a = np.full((H, W, 3), 128, np.uint8)
        for ann in anns:
            if ann["image_id"] == im["id"]:
                x, y, w, h = ann["bbox"]
                a[y:y + h, x:x + w] = COLOURS[ann["category_id"]]
        Image.fromarray(a).save(folder / im["file_name"], quality=95)


@pytest.fixture
def coco_dir(tmp_path):
    """A COCO 2017 layout: annotations/instances_{train,val}2017.json, train2017/, val2017/."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, first in (("train", 1), ("val", 11)):
        images, anns = _split(first)
        _draw(root / f"{split}2017", images, anns)
        data = dict(images=images, annotations=anns, categories=CATEGORIES)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def _train_argv(data, out, name, model="maskrcnn_qtvit_1", *extra):
    kwargs = ["--model-kwargs", *SMALL_QTVIT1] if model == "maskrcnn_qtvit_1" else []
    return ["train", "--task", "detection", "--model", model, "--data", str(data), "--output", str(out), "--name",
            name, "--img-size", "64", "--batch-size", "2", "--epochs", "2", "--workers", "0", "--threads", "1",
            "--device", "cpu", "--no-progress", *kwargs, *extra]


def test_a_coco_set_trains_two_steps_and_validates_as_json_through_the_cli(coco_dir, tmp_path, capsys):
    assert main(_train_argv(coco_dir, tmp_path / "runs", "coco")) == 0
    out = capsys.readouterr().out
    assert "on coco (3 train / 3 eval images, 4 classes, 64 px), 2 epochs x 1 steps" in out
    run = tmp_path / "runs" / "coco"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["task"] == "detection" and summary["metric"] == "box_ap"
    assert set(BOX_SCORES + MASK_SCORES) <= set(summary)
    assert main(["validate", "--checkpoint", str(run), "--data", str(coco_dir), "--json", "--workers", "0",
                 "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["task"] == "detection" and r["images"] == 3 and r["model"] == "maskrcnn_qtvit_1"
    assert len(BOX_SCORES) == len(MASK_SCORES) == 12 and set(BOX_SCORES + MASK_SCORES) <= set(r)
    assert all(-1 <= r[k] <= 100 for k in BOX_SCORES + MASK_SCORES)
    names = ["background", "car", "train", "kite"]  # labels 1..3 are the ids 3, 7, 12 in order
    assert list(r["per_class_box_ap"]) == names and list(r["per_class_mask_ap"]) == names
    assert r["per_class_box_ap"]["background"] is None and r["loss"] is None  # detectors give no eval loss
    assert r["test_size"] == [[64], 96]  # the detector's own resize, as trained
    assert main(["validate", "--checkpoint", str(run), "--data", str(coco_dir), "--workers", "0", "--img-size",
                 "80"]) == 0
    line = capsys.readouterr().out
    assert "box AP" in line and "mask AP" in line and "on 3 images" in line and "loss" not in line


def test_predict_draws_and_writes_coco_results_with_the_datasets_category_ids(coco_dir, tmp_path, capsys):
    assert main(_train_argv(coco_dir, tmp_path / "runs", "coco", "det_tiny", "--epochs", "1")) == 0
    images = sorted(str(p) for p in (coco_dir / "val2017").iterdir())
    out = tmp_path / "drawn"
    assert main(["predict", *images, "--checkpoint", str(tmp_path / "runs" / "coco"), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detections.json" in printed
    for p in images:
        drawn = out / (p.rsplit("/", 1)[1].rsplit(".", 1)[0] + "_detections.png")
        with Image.open(drawn) as im:
            assert im.size == (W, H) and im.mode == "RGB"
    results = json.loads((out / "detections.json").read_text())
    assert results, "an untrained detector still scores every class above torchvision's 0.05"
    assert {r["category_id"] for r in results} <= {3, 7, 12}
    assert {r["image_id"] for r in results} <= {11, 12, 13}  # the numbers the file names are
    assert all(len(r["bbox"]) == 4 and "counts" in r["segmentation"] for r in results)
    # files already there are not replaced without --overwrite
    assert main(["predict", images[0], "--checkpoint", str(tmp_path / "runs" / "coco"), "--output-dir",
                 str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_retinanet_trains_and_validates_boxes_only(coco_dir, tmp_path, capsys):
    assert main(_train_argv(coco_dir, tmp_path / "runs", "retina", "retina_tiny", "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(tmp_path / "runs" / "retina"), "--data", str(coco_dir), "--json",
                 "--workers", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(BOX_SCORES) <= set(r) and not any(k.startswith("mask_") for k in r)


def det_config(tmp_path, **kw):
    """The Fashion-MNIST scenes of the small subset, their instances, 64 px training crops."""
    base = dict(task="detection", model="det_tiny", data=SMALL_FMNIST, img_size=64, epochs=2, batch_size=2,
                eval_batch_size=4, limit_train=6, limit_eval=2, lr=1e-3, warmup_epochs=0.5, workers=0)
    base.update(kw)
    return tiny_config(tmp_path, **base)


def test_resume_continues_with_the_same_losses_weights_and_scores(tmp_path):
    extra = dict(model_ema=True, model_ema_warmup_steps=2)
    full = train(det_config(tmp_path, name="full", **extra))
    first = train(det_config(tmp_path, name="crash", checkpoint_every_steps=2, max_steps=5, keep_checkpoints=3,
                             **extra))
    assert first["stopped"] and latest_checkpoint(tmp_path / "crash").name == "step_00000005"
    step4 = tmp_path / "crash" / "checkpoints" / "step_00000004"
    rest = train(det_config(tmp_path, name="crash", resume=str(step4), **extra))
    ref = dict(full["step_losses"])
    assert [s for s, _ in rest["step_losses"]] == [5, 6]
    assert all(loss == pytest.approx(ref[s], abs=1e-6) for s, loss in rest["step_losses"])
    a, b = load_model(latest_checkpoint(tmp_path / "full")), load_model(latest_checkpoint(tmp_path / "crash"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    for key in ("train_loss", "box_ap", "ema_box_ap", "mask_ap"):
        assert rest["history"][-1][key] == pytest.approx(full["history"][-1][key], abs=1e-6)


_DDP_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from _tiny_detector import register_tiny_detectors
    from test_det_task import det_config
    from qtvit.train import train
    register_tiny_detectors()
    train(det_config({out!r}, name="ddp", max_steps=2, limit_eval=4, model_ema=True))
""")


def test_two_processes_train_and_score_the_whole_evaluation_set(tmp_path):
    # DDP around the detector's training forward, and COCOeval over both ranks' detections gathered
    script = tmp_path / "ddp_det.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    run_two_processes(script)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["global_step"] == 2
    v = validate(latest_checkpoint(tmp_path / "ddp"), data=SMALL_FMNIST, limit=4, device="cpu", workers=0)
    assert v["images"] == 4
    for key in ("box_ap", "box_ar100", "mask_ap"):
        assert v[key] == pytest.approx(summary[key], abs=1e-3)


def test_training_augmentation_is_the_same_with_loader_workers():
    info = open_detection(SMALL_FMNIST)
    batches = [build_detection_batches(info, train=True, size=64, batch_size=2, limit=4,
                                       shard=Shard(seed=3, workers=w)) for w in (0, 2)]
    (x0, t0), (x1, t1) = (next(iter(b.iterate(1, 1))) for b in batches)
    assert all(torch.equal(a, b) for a, b in zip(x0, x1)) and x0[0].shape == (3, 64, 64)
    assert all(torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"]) for a, b in zip(t0, t1))


def test_the_task_counts_the_background_and_sums_the_losses():
    info = open_detection(SMALL_FMNIST)
    assert info.classes[0] == "background" and len(info.classes) == 11 and info.cat_ids == list(range(1, 11))
    cfg = make_config(task="detection", model="det_tiny")
    with pytest.raises(ValueError, match="10 categories need 11 classes; leave --num-classes out"):
        Detection(12, None, cfg, info)
    task = Detection(11, None, cfg, info)
    parts = {"loss_classifier": torch.tensor(1.5), "loss_mask": torch.tensor(0.25)}
    assert float(task.loss(parts)) == 1.75 and set(task.loss_parts) == set(parts)
    with pytest.raises(ValueError, match="is not a detector"):
        task.loss(torch.zeros(2, 3))


def test_wrong_data_task_or_options_are_clear_errors_through_the_cli(coco_dir, tmp_path, capsys):
    imagenet = tmp_path / "imagenet"
    (imagenet / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(imagenet / "train" / "cat" / "x.png")
    cases = [
        (_train_argv(imagenet, tmp_path, "a", "det_tiny"),
         "--task detection: .*no COCO data found.*--task classification"),
        (_train_argv("fashion-mnist", tmp_path, "b", "det_tiny"), "fashion-mnist is a classification dataset"),
        (["train", "--data", str(coco_dir), "--output", str(tmp_path), "--model", "train_tiny"],
         "is a detection dataset \\(COCO format\\); pass --task detection"),
        (["train", "--task", "segmentation", "--data", str(coco_dir), "--output", str(tmp_path)],
         "--task segmentation: .* is a detection dataset \\(COCO format\\); pass --task detection"),
        (_train_argv(coco_dir, tmp_path, "c", "det_tiny", "--num-classes", "5"), "3 categories need 4 classes"),
        (_train_argv(coco_dir, tmp_path, "d", "det_tiny", "--mixup", "0.2"), "--mixup are not for detection"),
        (["train", "--model", "det_tiny", "--output", str(tmp_path), "--data", SMALL_FMNIST, "--max-steps", "1"],
         "det_tiny is a detection model; train it with --task detection"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert re.search(message, err), (message, err)
    # a bad annotation names the file and the annotation
    ann = coco_dir / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [70, 50, 30, 30]
    ann.write_text(json.dumps(data))
    assert main(_train_argv(coco_dir, tmp_path, "e", "det_tiny")) == 1
    err = capsys.readouterr().err
    assert "instances_val2017.json: annotation 111: box [70, 50, 30, 30] lies outside its image" in err


class _FixedDetector(torch.nn.Module):
    """Two detections of every image: label 1 (score 0.9, a box and its mask) and label 3 (score 0.3)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for im in images:
            masks = torch.zeros(2, 1, *im.shape[-2:])
            masks[0, 0, 10:30, 20:50] = 0.9
            out.append(dict(boxes=torch.tensor([[20.0, 10.0, 50.0, 30.0], [0.0, 0.0, 8.0, 8.0]]),
                            labels=torch.tensor([1, 3]), scores=torch.tensor([0.9, 0.3]), masks=masks))
        return out


def test_detections_are_drawn_above_the_threshold_and_all_written_with_category_ids(tmp_path):
    from qtvit.tasks.det_predict import detect_images
    image = tmp_path / "street.png"
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(image)
    names = ["background", "car", "train", "kite"]
    [r] = list(detect_images(_FixedDetector(), [image], tmp_path / "out", names, [3, 7, 12]))
    assert r["image_id"] == 1 and [d["class"] for d in r["detections"]] == ["car"]  # 0.3 is below 0.5
    assert r["detections"][0]["category_id"] == 3 and r["detections"][0]["box"] == [20.0, 10.0, 50.0, 30.0]
    drawn = np.asarray(Image.open(r["drawn"]))
    assert drawn.shape == (H, W, 3) and (drawn[15:25, 25:45] != 128).any()  # the mask, blended in
    assert (drawn[2:6, 2:6] == 128).all()  # the box below the threshold is not drawn
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [(r["category_id"], r["score"]) for r in results] == [(3, pytest.approx(0.9)), (12, pytest.approx(0.3))]
    assert results[0]["bbox"] == [20.0, 10.0, 30.0, 20.0] and mask_api.area(
        dict(results[0]["segmentation"], counts=results[0]["segmentation"]["counts"].encode())) == 600


class _Oracle(torch.nn.Module):
    """Returns the given targets in order, as detections of score 1: a perfect detector for the evaluation."""

    class roi_heads:  # a mask branch, as Mask R-CNN's RoIHeads says
        has_mask = staticmethod(lambda: True)

    def __init__(self, targets: list):
        super().__init__()
        self.targets, self.weight = list(targets), torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets.pop(0)
            out.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                            masks=t["masks"][:, None].float()))
        return out


@pytest.mark.parametrize("which", ["coco", "scenes"])
def test_a_perfect_detector_scores_100_with_the_datasets_category_ids(which, request):
    from qtvit.tasks.det_evaluate import evaluate_detection
    info = open_detection(request.getfixturevalue("coco_dir") if which == "coco" else SMALL_FMNIST)
    batches = build_detection_batches(info, train=False, size=64, batch_size=2, limit=3, shard=Shard(workers=0))
    targets = [t for _, ts in batches.iterate(0) for t in ts]
    r = evaluate_detection(_Oracle(targets), batches, torch.device("cpu"))
    assert r.images == 3 and r.scores["box_ap"] == r.scores["mask_ap"] == 100.0
    assert r.per_class["box_ap"][0] is None and all(v in (None, 100.0) for v in r.per_class["box_ap"][1:])
    if which == "coco":  # every category has ground truth in the val images: car, train, kite
        assert r.per_class["box_ap"] == [None, 100.0, 100.0, 100.0]


def test_figure_draws_the_ground_truth_beside_the_detections_through_the_cli(coco_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from qtvit.tools.figures.detection import predict_examples
    assert main(_train_argv(coco_dir, tmp_path / "runs", "coco", "det_tiny", "--epochs", "1")) == 0
    run = tmp_path / "runs" / "coco"
    images, truths, preds, names = predict_examples(run, str(coco_dir), images=2, first=1)
    assert names == ["background", "car", "train", "kite"]
    assert [im.shape for im in images] == [(3, H, W)] * 2 and images[0].dtype == torch.uint8
    # the evaluation images 12 and 13 as validate reads them: one object (the crowd region is no object), none
    assert [t["image_id"] for t in truths] == [12, 13] and [t["labels"].tolist() for t in truths] == [[2], []]
    assert all({"boxes", "labels", "scores", "masks"} <= set(p) for p in preds)
    out = tmp_path / "fig" / "det.png"
    argv = ["figure", "detection", "--checkpoint", str(run), "--data", str(coco_dir), "--images", "3"]
    assert main(argv + ["--out", str(out), "--score-threshold", "0.05"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as im:  # three rows of two panels
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 1.2 * im.size[0]
    # a segmentation model, the scenes against a model of 3 categories, other category ids, too few images
    seg = tmp_path / "seg.safetensors"
    save_weights(create_model("qtvit_seg_nano_scenes"), seg)
    data = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    for c in data["categories"]:
        c["id"] += 20
    for a in data["annotations"]:
        a["category_id"] += 20
    shifted = tmp_path / "shifted"  # the val images with their json: a COCO-format folder
    shutil.copytree(coco_dir / "val2017", shifted)
    (shifted / "val.json").write_text(json.dumps(data))
    cases = [(["--checkpoint", str(seg)], "holds a segmentation model .*not a detector"),
             (["--checkpoint", str(run), "--data", SMALL_FMNIST], "the dataset has 11 classes, the checkpoint 4"),
             (["--checkpoint", str(run), "--data", str(shifted)],
              r"category ids \[23, 27, 32\]\.\.\. differ from the checkpoint's \[3, 7, 12\]"),
             (["--checkpoint", str(run), "--data", str(coco_dir), "--images", "0"], "--images 0 --first 0"),
             (["--checkpoint", str(run), "--data", str(coco_dir), "--first", "3"], "has only 3 images"),
             (["--checkpoint", str(run), "--score-threshold", "50"], "--score-threshold 50.0 is not a score")]
    for args, message in cases:
        assert main(["figure", "detection", *args, "--out", str(tmp_path / "bad.png")]) == 1, args
        err = capsys.readouterr().err
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "bad.png").exists()


def test_the_ground_truth_is_drawn_as_detections_are_with_plain_class_names():
    from qtvit.tasks.det_predict import draw_detections
    image = torch.full((3, H, W), 128, dtype=torch.uint8)
    masks = torch.zeros(1, H, W, dtype=torch.uint8)
    masks[0, 10:30, 20:50] = 1
    truth = dict(boxes=torch.tensor([[20.0, 10.0, 50.0, 30.0]]), labels=torch.tensor([2]), masks=masks)
    drawn = draw_detections(image, truth, ["background", "car", "train", "kite"])
    assert drawn.shape == image.shape and (drawn[:, 15:25, 25:45] != 128).any()  # the mask, blended in
    assert (drawn[:, 40:, :] == 128).all()  # nothing else
    # the same object as a detection (its mask a probability map, with a score) is drawn in the same colours
    det = dict(truth, masks=masks[:, None].float() * 0.9, scores=torch.tensor([0.8]))
    both = draw_detections(image, det, ["background", "car", "train", "kite"])
    assert torch.equal(both[:, 15:25, 25:45], drawn[:, 15:25, 25:45])
    assert torch.equal(draw_detections(image, dict(truth, labels=truth["labels"][:0], boxes=truth["boxes"][:0],
                                                   masks=masks[:0]), ["background", "car"]), image)
