"""The qtvit command: train / validate / predict end to end on the small Fashion-MNIST subset, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from qtvit.cli import COMMANDS, build_parser, config_from_args, main
from qtvit.data import load_fashion_mnist
from conftest import SMALL_FMNIST

pytestmark = pytest.mark.usefixtures("tiny_models")

_TRAIN = ["train", "--model", "train_tiny", "--data", SMALL_FMNIST, "--epochs", "2", "--batch-size", "20",
          "--lr", "3e-3", "--threads", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, request):
    request.getfixturevalue("tiny_models")
    out = tmp_path_factory.mktemp("cli")
    assert main(_TRAIN + ["--output", str(out), "--name", "run"]) == 0
    return out / "run"


def test_train_validate_predict(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(trained_run), "--data", SMALL_FMNIST, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    best = json.loads((trained_run / "best" / "config.json").read_text())
    assert r["images"] == 100 and r["model"] == "train_tiny" and r["top1"] == pytest.approx(best["top1"])
    assert 0 <= r["top1"] <= r["top5"] <= 100

    x, _ = load_fashion_mnist("test", SMALL_FMNIST)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(x[i].numpy()).save(paths[-1])
    assert main(["predict", *map(str, paths), "--checkpoint", str(trained_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(paths[0]) and len(out) == 12  # a header and 5 classes per image
    probs = [float(line.split("%")[0]) for line in out[1:6]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    assert out[1].split("%", 1)[1].strip() in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                               "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_resume_from_the_command_line_uses_the_saved_options(trained_run):
    args = build_parser().parse_args(["train", "--resume", str(trained_run), "--epochs", "3"])
    cfg = config_from_args(args)
    assert cfg.model == "train_tiny" and cfg.batch_size == 20 and cfg.epochs == 3 and cfg.data == SMALL_FMNIST
    assert main(["train", "--resume", str(trained_run), "--epochs", "3", "--no-progress"]) == 0
    rows = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochz", "3"])
    assert e.value.code == 2 and "--epochz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2 and "trian" in capsys.readouterr().err


def test_bad_input_errors_name_the_problem(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(_TRAIN + ["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main(["predict", str(text), "--checkpoint", str(trained_run)]) == 1
    err = capsys.readouterr().err
    assert "notes.txt is not a readable image" in err

    assert main(["validate", "--checkpoint", str(trained_run), "--model", "train_tiny_gn", "--data",
                 SMALL_FMNIST]) == 1
    err = capsys.readouterr().err
    assert "holds weights of model 'train_tiny'" in err and "--model train_tiny" in err

    assert main(["validate", "--checkpoint", str(tmp_path / "missing"), "--data", SMALL_FMNIST]) == 1
    assert "does not exist" in capsys.readouterr().err

    assert main(["train", "--recipe", "fashion-mnist", "--resume", str(tmp_path)]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_command_table_and_python_dash_m():
    assert [fn for _, fn in COMMANDS][:3] == ["add_train_parser", "add_validate_parser", "add_predict_parser"]
    assert {"train", "validate", "predict"} <= set(build_parser()._subparsers._group_actions[0].choices)
    proc = subprocess.run([sys.executable, "-m", "qtvit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train" in proc.stdout and "predict" in proc.stdout


def test_recipe_and_options_from_the_command_line():
    args = build_parser().parse_args(["train", "--recipe", "fashion-mnist", "--epochs", "2", "--no-hflip",
                                      "--model-kwargs", "widths=[8,8,8,8,8]", "--betas", "0.8", "0.9"])
    cfg = config_from_args(args)
    assert cfg.recipe == "fashion-mnist" and cfg.epochs == 2 and cfg.hflip is False and cfg.lr == 3e-3
    assert cfg.model_kwargs == {"widths": [8, 8, 8, 8, 8]} and cfg.betas == (0.8, 0.9)


def test_main_job_recipe_model_trains_and_reloads(tmp_path, capsys):
    # the recipe's real QT-ViT (not the tiny test model), a few steps on the small subset
    assert main(["train", "--recipe", "fashion-mnist", "--data", SMALL_FMNIST, "--epochs", "1", "--batch-size", "50",
                 "--threads", "1", "--no-progress", "--output", str(tmp_path), "--name", "r"]) == 0
    capsys.readouterr()
    final = tmp_path / "r" / "checkpoints" / (tmp_path / "r" / "checkpoints" / "latest").read_text().strip()
    assert main(["validate", "--checkpoint", str(final), "--data", SMALL_FMNIST, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert r["images"] == 100 and r["top1"] == pytest.approx(row["top1"])  # the same weights, the same protocol
