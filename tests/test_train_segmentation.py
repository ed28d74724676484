"""Segmentation through the one training loop: the task's loss (resized logits, ignored pixels, auxiliary head),
learning, exact resume, the best weights by mIoU, validation and prediction of a saved run, the poly schedule, and
clear errors for a wrong task, dataset or model. Tiny models (a few convolutions, stride 4) and tiny data: a few
dozen Fashion-MNIST scenes from the small real subset, or 64 x 64 synthetic shapes for learning."""
from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import SMALL_FMNIST, run_two_processes, tiny_config
from qtvit.checkpoints import latest_checkpoint
from qtvit.data import Shard
from qtvit.cli import main
from qtvit.train import load_model, lr_at, make_config, predict, train, validate
from qtvit.tasks.seg_predict import seg_palette
from qtvit.tasks import EvalResult
from qtvit.tasks.segmentation import Segmentation


class TinySeg(nn.Module):
    """Four conv-BN-GELU layers (stride 4, dilations widen the view) and a 1x1 classifier: logits at stride 4.
    ``aux``: "none"; "tuple": (logits, aux_logits) from forward in training; "method": forward_with_aux, as the
    zoo's segmentation models."""

    def __init__(self, num_classes: int = 11, in_chans: int = 3, width: int = 16, aux: str = "none",
                 norm: str = "bn"):
        super().__init__()
        self.pretrained_cfg = {"input_size": (in_chans, 64, 64), "crop_pct": 1.0, "interpolation": "bicubic",
                               "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans}

        def cna(i, o, stride=1, dilation=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(o) if norm == "bn" else nn.GroupNorm(4, o), nn.GELU())
        self.features = nn.Sequential(cna(in_chans, width, 2), cna(width, width, 2), cna(width, width, 1, 2),
                                      cna(width, width, 1, 4))
        self.head = nn.Conv2d(width, num_classes, 1)
        self.aux = aux
        self.aux_head = nn.Conv2d(width, num_classes, 1) if aux != "none" else None

    def forward(self, x):
        f = self.features(x)
        if self.aux == "tuple" and self.training:
            return self.head(f), self.aux_head(f)
        return self.head(f)


class TinySegWithAux(TinySeg):
    def forward_with_aux(self, x):
        f = self.features(x)
        return self.head(f), self.aux_head(f)


def seg_tiny(pretrained=False, **kw):
    return TinySeg(**kw)


def seg_tiny_aux(pretrained=False, **kw):
    return TinySeg(aux="tuple", **kw)


def seg_tiny_fwa(pretrained=False, **kw):
    return TinySegWithAux(aux="method", **kw)


@pytest.fixture(scope="module", autouse=True)
def seg_models(request):
    request.getfixturevalue("tiny_models")  # train_tiny (a classifier) too
    from qtvit.models import register_model, unregister_model
    for fn in (seg_tiny, seg_tiny_aux, seg_tiny_fwa):
        register_model(fn)
    yield
    for fn in (seg_tiny, seg_tiny_aux, seg_tiny_fwa):
        unregister_model(fn.__name__)


def seg_config(tmp_path, **kw):
    """A few Fashion-MNIST scenes (256 x 256) of the small subset, trained on 64 x 64 crops."""
    base = dict(task="segmentation", model="seg_tiny", data=SMALL_FMNIST, img_size=64, epochs=2, batch_size=4,
                eval_batch_size=4, limit_train=16, limit_eval=4, lr=5e-3, warmup_epochs=0.5, workers=0)
    base.update(kw)
    return tiny_config(tmp_path, **base)


def _shapes(root, n_train: int = 24, n_val: int = 8, size: int = 64):
    """A folder of image/mask pairs: red rectangles (class 1) and green discs (class 2) on grey noise (class 0),
    a 2-pixel ignored (255) frame round every mask."""
    rng = np.random.default_rng(0)
    root.mkdir()
    (root / "classes.txt").write_text("background\nred\ngreen\n")
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image = rng.integers(60, 190, (size, size, 1)).repeat(3, 2).astype(np.int64)
            mask = np.zeros((size, size), np.uint8)
            for _ in range(2):
                top, left = rng.integers(0, size - 20, 2)
                h, w = rng.integers(10, 20, 2)
                mask[top:top + h, left:left + w] = 1
                cy, cx, r = *rng.integers(10, size - 10, 2), rng.integers(5, 10)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
            image[mask == 1] = (200, 40, 40) + rng.integers(-20, 20, (int((mask == 1).sum()), 3))
            image[mask == 2] = (40, 200, 40) + rng.integers(-20, 20, (int((mask == 2).sum()), 3))
            mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = 255, 255, 255, 255
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


# ----------------------------------------------------------------------------------------------- the task
def test_loss_resizes_logits_ignores_255_and_adds_the_auxiliary_loss():
    cfg = make_config(task="segmentation", model="seg_tiny", aux_weight=0.4)
    from qtvit.data import DataConfig
    task = Segmentation(3, DataConfig((3, 8, 8), 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3), cfg)
    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :3] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    up_aux = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    keep = target != 255
    main_ce = -F.log_softmax(up, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][keep].mean()
    aux_ce = -F.log_softmax(up_aux, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][keep].mean()
    assert task.loss(logits, target).item() == pytest.approx(main_ce.item(), rel=1e-6)
    assert task.loss((logits, aux), target).item() == pytest.approx((main_ce + 0.4 * aux_ce).item(), rel=1e-6)
    assert task.loss((logits, None), target).item() == pytest.approx(main_ce.item(), rel=1e-6)
    assert task.loss(logits, torch.full_like(target, 255)).item() == 0.0  # nothing labelled: 0, not NaN
    with pytest.raises(ValueError, match="not per-pixel logits"):
        task.loss(torch.randn(2, 3), target)


def test_ohem_averages_the_loss_over_the_hard_pixels_only():
    from qtvit.data import DataConfig
    from qtvit.tasks.segmentation import hard_pixels
    # 64 labelled pixels of two classes: p(own class) = sigmoid(margin) from the logits' margin
    margin = torch.linspace(-3, 5, 64).reshape(1, 8, 8)
    logits = torch.stack([margin, torch.zeros_like(margin)], 1)  # class 0's logit is the margin
    target = torch.zeros(1, 8, 8, dtype=torch.int64)
    target[0, 0, :2] = 255
    p = torch.sigmoid(margin)
    hard = (p <= 0.7) & (target != 255)
    assert 10 < hard.sum() < 50
    task = Segmentation(2, DataConfig((3, 8, 8), 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3),
                        make_config(task="segmentation", ohem=0.7))
    expected = -torch.log(p)[hard].mean()
    assert task.loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # every pixel easy: the 1/16 hardest labelled ones (62 // 16 = 3) still train
    loss = F.cross_entropy(logits + torch.tensor([8.0, 0.0])[:, None, None], target, ignore_index=255,
                           reduction="none")
    kept = hard_pixels(loss, target != 255, 0.7)
    assert kept.sum() == 3 and not kept[0, 0, :2].any()
    assert loss[kept].min() >= loss[(target != 255) & ~kept].max()
    off = Segmentation(2, DataConfig((3, 8, 8), 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3),
                       make_config(task="segmentation"))  # default 0: the mean over every labelled pixel
    assert off.loss(logits, target).item() == pytest.approx(-torch.log(p)[target != 255].mean().item(), rel=1e-5)
    from qtvit.train.recipes import check_config
    with pytest.raises(ValueError, match=r"ohem must be finite and in \[0, 1\], got 1.5"):
        check_config(make_config(task="segmentation", ohem=1.5))
    with pytest.raises(ValueError, match="ohem 0.7 is for segmentation only"):
        check_config(make_config(ohem=0.7))


def test_seg_jitter_off_leaves_only_the_normalisation():
    from qtvit.data import DataConfig
    data_cfg = DataConfig((3, 8, 8), 1.0, "bicubic", (0.5,) * 3, (0.25,) * 3)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, 8, 8, dtype=torch.int64)
    plain = Segmentation(11, data_cfg, make_config(task="segmentation", seg_jitter=False))
    assert plain.augment.jitter is None
    out, target = plain.batch(x, y, torch.device("cpu"), torch.Generator())
    torch.testing.assert_close(out, (x.float() / 255 - 0.5) / 0.25)
    assert torch.equal(target, y)
    jittered = Segmentation(11, data_cfg, make_config(task="segmentation"))  # the default: jitter on
    assert jittered.augment.jitter is not None

def test_poly_schedule_after_the_warm_up():
    assert lr_at(0, 100, 10, 1.0, schedule="poly") == 0.0
    assert lr_at(10, 100, 10, 1.0, schedule="poly") == 1.0
    assert lr_at(55, 100, 10, 1.0, 0.1, schedule="poly") == pytest.approx(0.1 + 0.9 * 0.5 ** 0.9)
    assert lr_at(100, 100, 10, 1.0, schedule="poly") == 0.0
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)  # cosine stays the default
    with pytest.raises(ValueError, match="use cosine or poly"):
        lr_at(50, 100, 10, 1.0, schedule="linear")


# ----------------------------------------------------------------------------------------------- training
def test_training_learns_shapes_and_writes_per_class_scores(tmp_path):
    data = _shapes(tmp_path / "shapes")
    r = train(seg_config(tmp_path, data=str(data), epochs=5, batch_size=4, limit_train=None, limit_eval=None,
                         lr=1e-2))
    rows = r["history"]
    # all-background, the best constant guess: IoU(background) = its share of the labelled pixels, 0 elsewhere
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((data / "val" / "masks").glob("*.png"))])
    labelled = masks[masks != 255]
    baseline = 100 * (labelled == 0).mean() / 3
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5] and rows[-1]["eval_images"] == 8
    assert rows[-1]["miou"] > max(60.0, baseline + 30, rows[0]["miou"] + 10)
    assert 0 <= rows[-1]["miou"] <= rows[-1]["aacc"] <= 100 and "top1" not in rows[-1]
    run = tmp_path / "run"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"miou", "macc", "aacc", "eval_loss"} <= set(header) and not any("per_class" in h for h in header)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["metric"] == "miou" and summary["miou"] == rows[-1]["miou"]
    assert list(summary["per_class_iou"]) == ["background", "red", "green"]
    assert summary["miou"] == pytest.approx(sum(summary["per_class_iou"].values()) / 3, abs=1e-3)
    per_class = list(csv.DictReader((run / "per_class.csv").open()))
    assert len(per_class) == 5 * 3 and per_class[-1]["class"] == "green"
    assert float(per_class[-1]["iou"]) == pytest.approx(summary["per_class_iou"]["green"])


def test_aux_logits_add_their_weighted_loss(tmp_path):
    # the three tiny models build features and head first, from the same seed: the same main branch
    plain = [l for _, l in train(seg_config(tmp_path, name="plain", max_steps=2))["step_losses"]]
    for name in ("seg_tiny_aux", "seg_tiny_fwa"):
        before = initial_aux_weights(name)
        on = train(seg_config(tmp_path, name=f"{name}-on", model=name, max_steps=2))
        # step 1: the same main loss plus 0.4 x the auxiliary cross-entropy (about ln 11 at the start)
        assert 0.4 * 1.5 < on["step_losses"][0][1] - plain[0] < 0.4 * 4
        assert not torch.equal(before, on["model"].aux_head.weight.detach())  # its gradient reached the aux head
        off = train(seg_config(tmp_path, name=f"{name}-off", model=name, max_steps=2, aux_weight=0.0))
        assert [l for _, l in off["step_losses"]] == pytest.approx(plain, abs=1e-6)  # weight 0: the plain loss


def initial_aux_weights(name):
    """The auxiliary head's initial weights, as train() draws them (torch.manual_seed(seed) before the build)."""
    from qtvit.train import build_model
    torch.manual_seed(0)
    return build_model(name, 11, 3).aux_head.weight.detach().clone()


def test_resume_continues_with_the_same_loss_curve(tmp_path):
    # jitter (global RNG), random scale/crop/flip (seeded per sample), EMA and the auxiliary head
    extra = dict(model="seg_tiny_fwa", model_ema=True, model_ema_warmup_steps=2, schedule="poly")
    full = train(seg_config(tmp_path, name="full", **extra))
    first = train(seg_config(tmp_path, name="crash", checkpoint_every_steps=3, max_steps=7, keep_checkpoints=2,
                              **extra))
    assert first["stopped"] and latest_checkpoint(tmp_path / "crash").name == "step_00000007"
    step6 = tmp_path / "crash" / "checkpoints" / "step_00000006"
    rest = train(seg_config(tmp_path, name="crash", resume=str(step6), **extra))
    ref = dict(full["step_losses"])
    assert [s for s, _ in rest["step_losses"]] == [7, 8]
    assert all(loss == pytest.approx(ref[s], abs=1e-6) for s, loss in rest["step_losses"])
    for key in ("train_loss", "miou", "ema_miou", "eval_loss"):
        assert rest["history"][-1][key] == pytest.approx(full["history"][-1][key], abs=1e-6)
    assert rest["best"] == full["best"]


def test_best_weights_follow_the_tasks_metric(tmp_path, monkeypatch):
    scripted = iter([(10.0, 90.0), (30.0, 10.0), (20.0, 99.0)])  # (miou, aacc) of epochs 1-3

    def evaluate(self, model, batches, device):
        miou, aacc = next(scripted)
        return EvalResult({"miou": miou, "macc": miou, "aacc": aacc}, 1.0, 4, {"iou": [miou] + [None] * 10})
    monkeypatch.setattr(Segmentation, "evaluate", evaluate)
    r = train(seg_config(tmp_path, epochs=3))
    assert r["best"] == {"miou": 30.0, "macc": 30.0, "aacc": 10.0, "epoch": 2, "step": 8, "which": "model",
                         "metric": "miou"}
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert best["epoch"] == 2 and best["metric"] == "miou" and best["pretrained_cfg"]["task"] == "segmentation"
    per_class = list(csv.DictReader((tmp_path / "run" / "per_class.csv").open()))
    assert [row["iou"] for row in per_class if row["class"] == "background"] == ["10.0", "30.0", "20.0"]
    assert per_class[1]["iou"] == ""  # undefined: empty, not NaN


# ----------------------------------------------------------------------------------------------- a saved run
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segrun")
    r = train(seg_config(tmp, epochs=2))
    return tmp / "run", r


def test_validate_reports_the_runs_evaluation(seg_run, capsys):
    run, r = seg_run
    last = validate(latest_checkpoint(run), data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0)
    assert last["task"] == "segmentation" and last["images"] == 4
    for key in ("miou", "macc", "aacc"):
        assert last[key] == pytest.approx(r["history"][-1][key], abs=1e-3)
    assert last["loss"] == pytest.approx(r["history"][-1]["eval_loss"], rel=1e-4)
    assert last["per_class_iou"] == pytest.approx(r["per_class_iou"], abs=1e-3)
    best = validate(run, data=SMALL_FMNIST, limit=4, device="cpu", workers=0)  # the run folder: its best weights
    assert best["miou"] == pytest.approx(r["best"]["miou"], abs=1e-3)
    flags = ["--data", SMALL_FMNIST, "--limit", "4", "--device", "cpu", "--workers", "0"]
    assert main(["validate", "--checkpoint", str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {best['miou']:.2f}%" in out and "aAcc" in out and "top-1" not in out
    assert main(["validate", "--checkpoint", str(run), *flags, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown["per_class_iou"])[:2] == ["background", "T-shirt/top"]
    assert shown["flip"] is False


def test_flip_test_scores_the_average_of_each_image_and_its_mirror(seg_run, capsys):
    from qtvit.models.segmentation import predict_full
    from qtvit.tasks.segmentation import segmentation_eval_batches
    from qtvit.tasks.inputs import model_input
    from qtvit.tasks.seg_metrics import SegmentationMetrics
    run, _ = seg_run
    flipped = validate(run, data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0, flip=True)
    plain = validate(run, data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0)
    # the same score by hand: predict_full's flip averages the upsampled logits of the image and its mirror
    # (bicubic, as the evaluation upsamples)
    net = load_model(run, device="cpu").eval()
    data_cfg, batches = segmentation_eval_batches(net, Segmentation.open_data(SMALL_FMNIST), batch_size=2,
                                                  limit=4, shard=Shard(workers=0))
    metric = SegmentationMetrics(len(flipped["per_class_iou"]), torch.device("cpu"))
    with torch.no_grad():
        for x, y in batches.iterate(0):
            metric.update(predict_full(net, model_input(x, data_cfg, torch.device("cpu")), size=y.shape[-2:],
                                       flip=True, mode="bicubic"), y)
    assert flipped["flip"] is True and flipped["miou"] == pytest.approx(metric.compute()["miou"], abs=1e-3)
    assert flipped["per_class_iou"] != plain["per_class_iou"]  # the mirror images changed some predictions
    assert main(["validate", "--checkpoint", str(run), "--data", SMALL_FMNIST, "--limit", "4", "--device", "cpu",
                 "--workers", "0", "--flip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(flipped["miou"], abs=1e-4)


def test_multi_scale_test_scores_the_mean_probability_of_the_views(seg_run, capsys):
    """validate(scales=...) averages, at the labels' size, the class probabilities of the image at each ratio of
    the evaluation size (each view's logits flip-averaged with --flip): the same score by hand with predict_full."""
    from qtvit.models.segmentation import predict_full
    from qtvit.tasks.segmentation import segmentation_eval_batches
    from qtvit.tasks.inputs import model_input
    from qtvit.tasks.seg_metrics import SegmentationMetrics
    run, _ = seg_run
    scales = (0.5, 1.0, 1.25)
    multi = validate(run, data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0, flip=True, scales=scales)
    flipped = validate(run, data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0, flip=True)
    net = load_model(run, device="cpu").eval()
    info = Segmentation.open_data(SMALL_FMNIST)
    data_cfg, batches = segmentation_eval_batches(net, info, batch_size=2, limit=4, scales=scales,
                                                  shard=Shard(workers=0))
    _, single = segmentation_eval_batches(net, info, batch_size=2, limit=4, shard=Shard(workers=0))
    metric = SegmentationMetrics(len(multi["per_class_iou"]), torch.device("cpu"))
    with torch.no_grad():
        for (views, y), (x, _) in zip(batches.iterate(0), single.iterate(0)):
            assert len(views) == 3 and torch.equal(views[1], x)  # ratio 1 is the single-scale view
            assert views[0].shape[-1] < x.shape[-1] < views[2].shape[-1]
            probs = [predict_full(net, model_input(v, data_cfg, torch.device("cpu")), size=y.shape[-2:], flip=True,
                                  mode="bicubic").softmax(1) for v in views]
            metric.update(torch.stack(probs).mean(0), y)
    assert multi["scales"] == [0.5, 1.0, 1.25] and flipped["scales"] == [1.0]
    assert multi["miou"] == pytest.approx(metric.compute()["miou"], abs=1e-3)
    assert multi["per_class_iou"] != flipped["per_class_iou"]  # the other scales changed some predictions
    assert math.isfinite(multi["loss"])
    assert main(["validate", "--checkpoint", str(run), "--data", SMALL_FMNIST, "--limit", "4", "--device", "cpu",
                 "--workers", "0", "-b", "2", "--flip", "--scales", "0.5", "1", "1.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(multi["miou"], abs=1e-4)
    assert main(["validate", "--checkpoint", str(run), "--data", SMALL_FMNIST, "--scales", "0", "--limit", "1",
                 "--device", "cpu", "--workers", "0"]) != 0
    assert "give one or more ratios of the evaluation size" in capsys.readouterr().err


def test_predict_writes_palette_masks_and_overlays(seg_run, tmp_path, capsys):
    run, _ = seg_run
    rng = np.random.default_rng(1)
    square = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(square)
    wide = tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)).save(wide)
    out = tmp_path / "masks"
    assert main(["predict", str(square), str(wide), "--checkpoint", str(run), "--output-dir", str(out)]) == 0
    assert "a_mask.png" in capsys.readouterr().out
    net = load_model(run)
    palette = seg_palette(11)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len(np.unique(palette, axis=0)) == 11  # distinct colours
    for image, (h, w) in ((square, (64, 64)), (wide, (40, 72))):
        mask = Image.open(out / f"{image.stem}_mask.png")
        overlay = Image.open(out / f"{image.stem}_overlay.png")
        assert mask.mode == "P" and mask.size == (w, h) and overlay.mode == "RGB" and overlay.size == (w, h)
        assert np.array_equal(np.asarray(mask.getpalette()[:33]).reshape(11, 3), palette)
        labels = np.asarray(mask)
        rgb = np.asarray(Image.open(image).convert("RGB")).astype(np.float64)
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        with torch.no_grad():
            expected = F.interpolate(net(x), size=(h, w), mode="bicubic", align_corners=False).argmax(1)[0]
        assert np.array_equal(labels, expected.numpy())  # the model's prediction at the image's size
        assert np.abs(np.asarray(overlay) - np.rint(0.5 * rgb + 0.5 * palette[labels])).max() <= 1
    r = predict([square], run, output_dir=tmp_path / "again")
    assert r[0]["size"] == [64, 64] and math.isclose(sum(r[0]["classes"].values()), 1.0, abs_tol=1e-4)


def test_figure_shows_the_images_truth_and_the_predictions_validate_scores(seg_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from qtvit.tools.figures.segmentation import predict_examples
    run, _ = seg_run
    images, truths, preds, names = predict_examples(run, SMALL_FMNIST, images=3, first=1)
    images, truths, preds = np.stack(images), np.stack(truths), np.stack(preds)  # lists: sizes may differ
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.uint8
    assert truths.shape == preds.shape == (3, 256, 256)
    assert names[0] == "background" and len(names) == 11
    # the same pixels and predictions as `qtvit validate` scores: its aAcc over images 0..3 from the figure's 1..3
    first = predict_examples(run, SMALL_FMNIST, images=1, first=0)
    t, p = np.concatenate([np.stack(first[1]), truths]), np.concatenate([np.stack(first[2]), preds])
    scored = validate(run, data=SMALL_FMNIST, limit=4, batch_size=1, device="cpu", workers=0)
    assert 100 * (p == t)[t != 255].mean() == pytest.approx(scored["aacc"], abs=1e-3)
    out = tmp_path / "fig.png"
    assert main(["figure", "segmentation", "--checkpoint", str(run), "--data", SMALL_FMNIST, "--images", "2",
                 "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG" and "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="the evaluation split has only 1000 images"):
        predict_examples(run, SMALL_FMNIST, images=1, first=1000)


def test_eval_size_is_saved_and_validate_evaluates_there(tmp_path):
    r = train(seg_config(tmp_path, eval_size=128, epochs=1))
    net = load_model(r["run_dir"])
    assert net.pretrained_cfg["eval_short_side"] == 128
    kw = dict(data=SMALL_FMNIST, limit=4, batch_size=2, device="cpu", workers=0)
    half = validate(r["run_dir"], **kw)  # the saved evaluation size: the run's own score
    assert half["miou"] == pytest.approx(r["history"][-1]["miou"], abs=1e-3)
    full = validate(r["run_dir"], img_size=256, **kw)  # --img-size still overrides it
    assert full["loss"] != pytest.approx(half["loss"], rel=1e-6)


# ----------------------------------------------------------------------------------------------- bad input
def test_recipe_and_flags_from_the_command_line(tmp_path):
    code = main(["train", "--recipe", "seg-scenes", "--model", "seg_tiny", "--data", SMALL_FMNIST, "--img-size", "64",
                 "-b", "4", "--eval-batch-size", "4", "--limit-train", "8", "--limit-eval", "2", "--epochs", "2",
                 "--max-steps", "3", "--workers", "0", "--threads", "1", "--no-progress", "--output", str(tmp_path),
                 "--name", "cli", "--lr", "1e-3", "--warmup-epochs", "1", "--eval-every-epochs", "1",
                 "--eval-size", "64"])
    assert code == 0
    args = json.loads((tmp_path / "cli" / "args.json").read_text())
    assert args["task"] == "segmentation" and args["schedule"] == "poly" and args["batch_size"] == 4
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["stopped"] and summary["miou"] is not None and summary["task"] == "segmentation"
    # the resumed run is a segmentation run again: the task comes back with the saved options
    assert main(["train", "--resume", str(tmp_path / "cli"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4] and all("miou" in row and "top1" not in row for row in rows)
    # poly decay after one epoch of warm-up (2 steps): step 3 of 4 is at t = 1/2
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert args["scale_range"] == [0.75, 0.75] and args["eval_size"] == 64  # the recipe's 0.75 scale; size overridden
    assert args["seg_jitter"] is False and args["limit_eval"] == 2
    with pytest.raises(ValueError, match="scale_range 2.0 1.0: give the smaller ratio first"):
        train(seg_config(tmp_path, scale_range=(2.0, 1.0)))


@pytest.mark.parametrize("argv, message", [
    (["--task", "segmentaton"], "invalid choice: 'segmentaton'"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
])
def test_bad_choices_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_wrong_task_dataset_or_model_is_a_clear_error(tmp_path, seg_run, capsys):
    with pytest.raises(ValueError, match=r"task must be classification, segmentation or detection, got 'segmentaton'"):
        train(seg_config(tmp_path, task="segmentaton"))
    with pytest.raises(ValueError, match="mixup and bce are for classification only"):
        train(seg_config(tmp_path, mixup=0.2, bce=True))
    with pytest.raises(ValueError, match="fashion-mnist is a classification dataset"):
        train(seg_config(tmp_path, data="fashion-mnist"))
    folder = tmp_path / "imagenet"
    (folder / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "train" / "cat" / "x.png")
    with pytest.raises(ValueError, match="--task segmentation: .* is not a segmentation dataset"):
        train(seg_config(tmp_path, data=str(folder)))
    with pytest.raises(ValueError, match="is a segmentation dataset; pass --task segmentation"):
        train(tiny_config(tmp_path, data="fashion-mnist-scenes"))
    with pytest.raises(ValueError, match="is a segmentation dataset; pass --task segmentation"):
        train(tiny_config(tmp_path, data=str(_shapes(tmp_path / "shapes", 1, 1))))
    with pytest.raises(ValueError, match=r"train_tiny returned \(4, 11\), not per-pixel logits"):
        train(seg_config(tmp_path, name="cls", model="train_tiny"))
    run, _ = seg_run
    assert main(["predict", str(folder / "train" / "cat" / "x.png"), "--checkpoint", str(run)]) == 1
    assert "pass --output-dir" in capsys.readouterr().err
    cls_run = train(tiny_config(tmp_path, name="classifier", max_steps=1))["run_dir"]
    with pytest.raises(ValueError, match="--output-dir is for segmentation checkpoints"):
        predict([folder / "train" / "cat" / "x.png"], cls_run, output_dir=tmp_path / "masks")
    with pytest.raises(ValueError, match="--crop-pct is for classification checkpoints"):
        validate(run, data=SMALL_FMNIST, crop_pct=0.9, limit=1, device="cpu", workers=0)
    for option in (dict(flip=True), dict(scales=(0.5, 1))):
        with pytest.raises(ValueError, match="--flip and --scales are for segmentation checkpoints"):
            validate(cls_run, data=SMALL_FMNIST, limit=1, device="cpu", workers=0, **option)


_DDP_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from qtvit.models import register_model
    from test_train_segmentation import seg_config, seg_tiny_fwa
    from qtvit.train import train
    register_model(seg_tiny_fwa)
    train(seg_config({out!r}, name="ddp", model="seg_tiny_fwa", model_kwargs={{"norm": "gn"}}, batch_size=2,
                     max_steps=3, model_ema=True))
""")


def test_two_processes_train_and_score_the_whole_evaluation_set(tmp_path):
    # the auxiliary head's forward under DDP, and one confusion matrix over both ranks' halves of the scenes
    script = tmp_path / "ddp_seg.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    run_two_processes(script)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["per_class_iou"]["background"] is not None
    # rank 0's weights in one process, on all 4 evaluation scenes: the same scores
    v = validate(latest_checkpoint(tmp_path / "ddp"), data=SMALL_FMNIST, limit=4, batch_size=4, device="cpu",
                 workers=0)
    assert v["images"] == 4
    for key in ("miou", "macc", "aacc"):
        assert v[key] == pytest.approx(summary[key], abs=1e-3)


def test_predict_refuses_to_replace_files_and_inputs(seg_run, tmp_path, capsys):
    """Issue 27: --output-dir replaced existing PNGs, inputs not yet read among them (b_mask.png)."""
    run, _ = seg_run
    rng = np.random.default_rng(2)
    out = tmp_path / "out"
    out.mkdir()
    a, b = out / "a.png", out / "b_mask.png"  # b_mask.png is an input image and a's neighbour's output name
    for p in (a, b):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["predict", str(a), str(b), "--checkpoint", str(run), "--output-dir", str(out)]
    (out / "a_mask.png").write_bytes(b"user's")
    assert main(argv) == 1
    assert "a_mask.png already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0  # b's outputs are b_mask_mask.png and b_mask_overlay.png
    assert (out / "a_mask.png").read_bytes() != b"user's" and (out / "b_mask.png").read_bytes() == before["b_mask.png"]
    c = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(c)
    assert main(["predict", str(c), str(b), "--checkpoint", str(run), "--output-dir", str(out), "--overwrite"]) == 1
    assert "is one of the input images" in capsys.readouterr().err  # b.png's mask would replace the input b_mask.png
    assert (out / "b_mask.png").read_bytes() == before["b_mask.png"]
    (tmp_path / "file").write_text("x")
    assert main(["predict", str(a), "--checkpoint", str(run), "--output-dir", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Errno" not in err
    assert main(["predict", str(out), "--checkpoint", str(run), "--output-dir", str(tmp_path / "m")]) == 1
    assert "is a folder, not an image file" in capsys.readouterr().err


def test_num_classes_names_the_classes_of_a_folder_without_classes_txt(tmp_path, capsys):
    """Issue 27: --num-classes was ignored for image/mask folders without classes.txt (the error then asked for it);
    a run trained so is validated on that folder with its checkpoint's class count."""
    data = tmp_path / "shapes"
    _shapes(data, n_train=8, n_val=4, size=32)
    (data / "classes.txt").unlink()
    r = train(seg_config(tmp_path, data=str(data), img_size=32, epochs=1, num_classes=3, limit_train=8))
    assert len(r["per_class_iou"]) == 3
    v = validate(tmp_path / "run", data=str(data), device="cpu", workers=0)
    assert v["images"] == 4 and list(v["per_class_iou"]) == ["0", "1", "2"]


def test_a_bad_mask_met_by_a_loader_worker_is_one_line(seg_run, tmp_path, capsys):
    run, _ = seg_run
    rng = np.random.default_rng(3)
    for kind, array in (("images", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                        ("masks", np.full((32, 32), 200, np.uint8))):
        (tmp_path / "val" / kind).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "val" / kind / "a.png")
    from qtvit.data import SCENE_CLASSES
    (tmp_path / "classes.txt").write_text("\n".join(SCENE_CLASSES))
    assert main(["validate", "--checkpoint", str(run), "--data", str(tmp_path), "--device", "cpu",
                 "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "holds label values [200]" in err and len(err.strip().splitlines()) == 1 and "worker" not in err


def test_figure_of_images_of_several_sizes_checks_the_classes(seg_run, tmp_path, capsys):
    """Issue 27: `figure segmentation` failed on ADE20K's mixed image sizes, and skipped validate's class check."""
    pytest.importorskip("matplotlib")
    from qtvit.data import SCENE_CLASSES
    run, _ = seg_run
    rng = np.random.default_rng(4)
    data = tmp_path / "mixed"
    for i, (h, w) in enumerate([(32, 48), (40, 40), (24, 64)]):
        for kind, array in (("images", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                            ("masks", rng.integers(0, 11, (h, w), dtype=np.uint8))):
            (data / "val" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(data / "val" / kind / f"{i}.png")
    (data / "classes.txt").write_text("\n".join(SCENE_CLASSES))
    out = tmp_path / "fig.png"
    argv = ["figure", "segmentation", "--checkpoint", str(run), "--data", str(data), "--images", "3"]
    assert main(argv + ["--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    (data / "classes.txt").write_text("\n".join(["sky", "road", "car"]))
    assert main(argv + ["--out", str(tmp_path / "other.png")]) == 1
    assert "differ from the checkpoint's" in capsys.readouterr().err and not (tmp_path / "other.png").exists()
    (tmp_path / "file").write_text("x")
    assert main(argv + ["--out", str(tmp_path / "file" / "fig.png")]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Errno" not in err
