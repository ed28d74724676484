"""What an adversarial pass found in training and validation (issue 27): a failed resume override, an error at the
first evaluation, two trainings into one folder, non-finite options and weights, nothing evaluated, strict JSON,
segmentation checkpoints without a recorded task, bad model arguments, unbounded workers; and a fuzz of every
numeric flag of `qtvit train`. Tiny models and data, a few steps each."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_FMNIST, tiny_config
from test_train_engine import nan_model  # noqa: F401  (a fixture: train_tiny_nan, NaN logits at one step)
from qtvit.checkpoints import latest_checkpoint
from qtvit.cli import build_parser, main
from qtvit.train import train, validate
from test_data_segmentation import ade, cityscapes  # noqa: F401  (fixtures: tiny official layouts)
from test_train_segmentation import _shapes, seg_config, seg_models  # noqa: F401  (seg_models: a fixture)

_TRAIN = ["train", "--model", "train_tiny", "--data", SMALL_FMNIST, "--epochs", "1", "--batch-size", "20",
          "--threads", "1", "--device", "cpu", "--no-progress", "--workers", "0"]


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- item 2
def test_a_failed_resume_override_changes_nothing_and_a_plain_resume_works(tmp_path, capsys):
    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "r", "--max-steps", "2"]) == 0
    run = tmp_path / "r"
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--num-classes", "12", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--num-classes 12" in err and "10" in err
    assert _snapshot(run) == before  # args.json included
    assert main(["train", "--resume", str(run), "--model", "train_tiny_gn", "--model-kwargs", "width=8"]) == 1
    err = capsys.readouterr().err
    assert "--model train_tiny_gn (the run's: train_tiny); --model-kwargs width=8 (the run's: none)" in err
    assert _snapshot(run) == before
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "args.json").read_text())["num_classes"] is None
    assert latest_checkpoint(run).name == "step_00000010"


# ----------------------------------------------------------------------------------------------- item 3
def test_the_epoch_is_saved_before_its_evaluation_and_a_resume_redoes_it(tmp_path, monkeypatch):
    from qtvit.tasks import Classification
    full = train(tiny_config(tmp_path, name="full"))
    original = Classification.evaluate

    def broken(self, *a, **k):
        raise ValueError("evaluation broke")
    monkeypatch.setattr(Classification, "evaluate", broken)
    with pytest.raises(ValueError, match="evaluation broke"):
        train(tiny_config(tmp_path, name="cut"))
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000010"  # the trained epoch is kept
    monkeypatch.setattr(Classification, "evaluate", original)
    rest = train(tiny_config(tmp_path, name="cut", resume=str(tmp_path / "cut")))
    assert [s for s, _ in rest["step_losses"]] == list(range(11, 21))
    assert [h["epoch"] for h in rest["history"]] == [1, 2]
    for a, b in zip(rest["history"], full["history"]):  # epoch 1's evaluation redone: the same numbers
        assert a["top1"] == b["top1"] and a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    rows = [json.loads(r) for r in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rest["best"]["top1"] == full["best"]["top1"]


def test_ade20k_with_mixed_image_sizes_trains_through_its_evaluation(tmp_path, ade):  # noqa: F811
    r = train(seg_config(tmp_path, data=str(ade), epochs=1, eval_batch_size=8, limit_train=None, limit_eval=None,
                         batch_size=2, img_size=32))
    assert r["history"][0]["eval_images"] == 2 and r["miou"] is not None
    v = validate(latest_checkpoint(tmp_path / "run"), data=str(ade), device="cpu", workers=0)  # default -b 8
    assert v["images"] == 2 and v["miou"] == pytest.approx(r["miou"], abs=1e-3)


def test_a_bad_validation_mask_is_named_and_the_run_resumes(tmp_path):
    data = _shapes(tmp_path / "shapes", n_train=8, n_val=2)
    good = (data / "val" / "masks" / "1.png").read_bytes()
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(data / "val" / "masks" / "1.png")
    cfg = dict(data=str(data), epochs=2, batch_size=4, limit_train=None, limit_eval=None)
    with pytest.raises(ValueError, match=r"1\.png holds label values \[9\]"):
        train(seg_config(tmp_path, **cfg))
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"
    (data / "val" / "masks" / "1.png").write_bytes(good)
    r = train(seg_config(tmp_path, resume=str(tmp_path / "run"), **cfg))
    assert [h["epoch"] for h in r["history"]] == [1, 2] and r["global_step"] == 4


def test_a_class_count_that_holds_the_ignore_label_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--num-classes 256: .* ignore"):
        train(seg_config(tmp_path, num_classes=256))
    assert latest_checkpoint(tmp_path / "run") is None


# ----------------------------------------------------------------------------------------------- item 4
def _pid_of_a_finished_process() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{other.pid}\n")
        capsys.readouterr()
        assert main(_TRAIN + ["--output", str(tmp_path), "--name", "r"]) == 1
        err = capsys.readouterr().err
        assert f"pid {other.pid}" in err and "--name" in err and "Traceback" not in err
        assert not (run / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    (run / ".lock").write_text(f"{_pid_of_a_finished_process()}\n")  # stale: its process is gone
    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "r", "--max-steps", "2"]) == 0
    assert not (run / ".lock").exists()  # released
    assert main(["train", "--resume", str(run), "--num-classes", "12", "--no-progress"]) == 1
    assert not (run / ".lock").exists()  # released on an error too


def test_two_trainings_started_at_once_one_refused(tmp_path):
    code = ("import sys; sys.path.insert(0, {tests!r}); import conftest; conftest.register_tiny_models(); "
            "from qtvit.cli import main; sys.exit(main({argv!r}))")
    argv = _TRAIN + ["--output", str(tmp_path), "--name", "same", "--epochs", "6"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code.format(tests=str(Path(__file__).parent), argv=argv)],
                              env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    refused = next(err for rc, err in results if rc == 1)
    # locked out while the other trains, or (when it started that late) refused by the finished run's checkpoints
    assert ("is already training into" in refused or "already holds a run" in refused) and "Traceback" not in refused
    assert latest_checkpoint(tmp_path / "same").name == "step_00000060"


# ----------------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("flag", ["--lr", "--weight-decay", "--mixup", "--warmup-epochs", "--min-lr", "--cutmix",
                                  "--opt-eps", "--clip-grad", "--aux-weight", "--warmup-lr"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", f"{flag}={value}"])  # parsing only: on a bug it would train
    assert e.value.code == 2 and "out of range" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["lr", "weight_decay", "mixup"])
def test_non_finite_options_are_refused_by_the_library(tmp_path, option):
    with pytest.raises(ValueError, match=f"^{option} must be finite and .*, got inf"):
        train(tiny_config(tmp_path, **{option: float("inf")}))


def test_weights_that_are_no_longer_finite_are_never_saved(tmp_path, capsys):
    from qtvit.train import Callback

    class Diverge(Callback):  # what an overflowing update leaves: a weight of inf
        def on_step_end(self, run, state, loss):
            if state.global_step == 7:
                with torch.no_grad():
                    run.model.head.weight[0, 0] = float("inf")
    capsys.readouterr()
    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "r", "--checkpoint-every-steps", "5"],
                callbacks=[Diverge()]) == 1
    err = capsys.readouterr().err
    assert "weights are not finite after step 10 (head.weight and 0 more)" in err and "--lr" in err
    assert not (tmp_path / "r" / "best").exists() and latest_checkpoint(tmp_path / "r").name == "step_00000005"


def test_a_skipped_step_leaves_the_batchnorm_statistics_untouched(tmp_path):
    from qtvit.train import Callback

    class Watch(Callback):
        seen = {}

        def on_step_start(self, run, state):
            self.before = [b.clone() for b in run.model.buffers()]
            self.skipped = state.skipped_steps

        def on_step_end(self, run, state, loss):
            if state.skipped_steps > self.skipped:
                self.seen["same"] = all(torch.equal(a, b) for a, b in zip(self.before, run.model.buffers()))
    watch = Watch()
    r = train(tiny_config(tmp_path, model="train_tiny_nan", epochs=1), callbacks=[watch])
    assert r["skipped_steps"] == 1 and watch.seen == {"same": True}


# ----------------------------------------------------------------------------------------------- item 10
def test_validation_with_nothing_readable_is_an_error(tmp_path, capsys):
    for split in ("train", "val"):  # a folder of readable images to train on ...
        for c in ("a", "b"):
            (tmp_path / "good" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / "good" / split / c / f"{i}.png")
    for c in ("a", "b"):  # ... and one where none is
        (tmp_path / "bad" / "val" / c).mkdir(parents=True)
        for i in range(3 if c == "a" else 0):
            (tmp_path / "bad" / "val" / c / f"{i}.png").write_bytes(b"not a png")
    assert main(["train", "--model", "train_tiny", "--data", str(tmp_path / "good"), "--epochs", "1", "-b", "4",
                 "--threads", "1", "--device", "cpu", "--no-progress", "--workers", "0", "--output", str(tmp_path),
                 "--name", "r", "--img-size", "16"]) == 0
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(tmp_path / "r"), "--data", str(tmp_path / "bad"),
                 "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "no image could be evaluated" in err and "3 unreadable" in err


def test_all_ignore_masks_warn_and_every_json_is_strict(tmp_path, capsys, caplog):
    data = _shapes(tmp_path / "shapes", n_train=4, n_val=2)
    for mask in (*(data / "val" / "masks").iterdir(), *(data / "train" / "masks").iterdir()):
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(mask)
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        r = train(seg_config(tmp_path, data=str(data), epochs=1, limit_train=None, limit_eval=None))
    assert "training loss is exactly 0" in capsys.readouterr().err
    assert "no labelled pixel" in caplog.text
    assert math.isnan(r["miou"])
    assert _strict_json((tmp_path / "run" / "summary.json").read_text())["miou"] is None
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    assert main(["validate", "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--workers", "0",
                 "--json"]) == 0
    shown = _strict_json(capsys.readouterr().out)
    assert shown["miou"] is None and shown["images"] == 2


# ----------------------------------------------------------------------------------------------- item 12
def test_an_official_segmentation_checkpoint_validates_and_predicts(tmp_path, cityscapes, capsys):  # noqa: F811
    import qtvit
    net = qtvit.create_model("efficientvit_seg_b0_cityscapes")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "official.pt")
    flags = ["--data", str(cityscapes), "--workers", "0", "--img-size", "64", "--device", "cpu"]
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(tmp_path / "official.pt"), "--model",
                 "efficientvit_seg_b0_cityscapes", *flags, "--json"]) == 0
    r = _strict_json(capsys.readouterr().out)
    assert r["task"] == "segmentation" and r["images"] == 1
    qtvit.save_pretrained(net, tmp_path / "pretrained")
    assert main(["validate", "--checkpoint", str(tmp_path / "pretrained"), *flags, "--json"]) == 0
    assert _strict_json(capsys.readouterr().out)["task"] == "segmentation"
    image = next((cityscapes / "leftImg8bit" / "val").rglob("*.png"))
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "pretrained"), "--output-dir",
                 str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 1


# ----------------------------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 5}, "--num-classes"),
    ({"in_chans": 1}, "in_chans"),
    ({"width": None}, "width=null"),
])
def test_bad_model_arguments_are_clean_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, model_kwargs=kwargs))


@pytest.mark.parametrize("kwargs, message", [
    ({"strides": None}, "strides"),
    ({"aux_channels": -1}, "aux_channels=-1"),
    ({"aux_channels": 0.5}, "aux_channels=0.5"),
    ({"head_args": None}, "head_args"),
])
def test_bad_zoo_model_arguments_name_the_argument(kwargs, message):
    from qtvit.train.setup import build_model
    name = "qtvit_pico" if "strides" in kwargs else "efficientvit_seg_b0_ade20k"
    with pytest.raises(ValueError, match=message):
        build_model(name, 10, 3, **kwargs)


@pytest.mark.parametrize("argv", [["--warmup-epochs", "1e308"], ["--seed", "100000000000000000000000"],
                                  ["--num-classes", "1000000000000000000"], ["--lr", "1e308"]])
def test_schedule_seed_and_size_extremes_are_clean_errors(tmp_path, argv, capsys):
    capsys.readouterr()
    try:
        code = main(_TRAIN + ["--output", str(tmp_path), "--name", "r", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and f"{argv[0]}: {argv[1]} is out of range" in err


# ----------------------------------------------------------------------------------------------- item 17
def test_workers_are_bounded_by_the_cpus(capsys):
    for argv in (["train", "--workers", "1000000"], ["validate", "--checkpoint", "x", "--workers", "1000000"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)  # parsing only: on a bug it would fork them
        assert e.value.code == 2 and "--workers: 1000000 is out of range" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- cosmetic
def test_a_dropped_classifier_of_the_same_class_count_says_why(tmp_path, caplog):
    from conftest import TinyNet
    from qtvit.checkpoints import load_checkpoint, save_weights
    a, b = TinyNet(num_classes=10, width=16), TinyNet(num_classes=10, width=8)  # the same classes, other widths
    b.pretrained_cfg["classifier"] = "head"
    with caplog.at_level("WARNING"):
        load_checkpoint(b, save_weights(a, tmp_path / "a.st", config={"architecture": "train_tiny"}), strict=False)
    text = caplog.text
    assert "dropped the checkpoint's classifier 'head' (10 classes) because its input width differs" in text
    assert "because the model has 10" not in text


def test_batch_norm_on_one_image_per_process_is_a_clean_error(tmp_path):
    with pytest.raises(ValueError, match=r"--batch-size 1.* at least 2"):
        train(seg_config(tmp_path, model="upernet_efficientvit_b0", batch_size=1, max_steps=1, img_size=32))


# ----------------------------------------------------------------------------------------------- fuzz
_FUZZ = ("nan", "inf", "-inf", "0", "-1", "1e308", "1000000000000000000")


def _numeric_train_flags() -> list[str]:
    """Every numeric option of TrainConfig (numbers, pairs of numbers, and those whose default is None)."""
    import dataclasses

    from qtvit.train.recipes import BOUNDS, TrainConfig
    defaults = TrainConfig()
    numeric = [f.name for f in dataclasses.fields(TrainConfig) if not isinstance(getattr(defaults, f.name), bool)
               and isinstance(getattr(defaults, f.name), (int, float, tuple))]
    assert set(numeric) <= set(BOUNDS)  # the one table of bounds holds them all
    return ["--" + name.replace("_", "-") for name in BOUNDS]


def test_every_numeric_train_flag_with_extreme_values_ends_without_a_traceback(tmp_path, capsys):
    base = ["train", "--model", "train_tiny", "--data", SMALL_FMNIST, "--epochs", "1", "-b", "10", "--limit-train",
            "20", "--limit-eval", "10", "--threads", "1", "--device", "cpu", "--no-progress", "--workers", "0",
            "--output", str(tmp_path)]
    pairs = ("--betas", "--rrc-scale", "--scale-range", "--scene-items")
    ran, failed = 0, []
    for i, flag in enumerate(_numeric_train_flags()):
        for j, value in enumerate(_FUZZ):
            argv = base + ["--name", f"f{i}_{j}"] + ([flag, value, value] if flag in pairs else [f"{flag}={value}"])
            argv += [] if flag == "--max-steps" else ["--max-steps", "3"]
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            except Exception as e:  # noqa: BLE001  (what a user would see as a traceback)
                code = f"{type(e).__name__}: {e}"
            capsys.readouterr()
            if code not in (0, 1, 2):
                failed.append((flag, value, code))
            ran += code == 0
    assert not failed, "\n".join(map(str, failed))
    assert ran > 10  # some values are fine and train
