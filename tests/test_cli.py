"""The qtvit command: train / validate / predict end to end on the small Fashion-MNIST subset, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
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
    args = build_parser().parse_args(["train", "--recipe", "fashion-mnist", "--epochs", "2", "--hflip",
                                      "--model-kwargs", "widths=[8,8,8,8,8]", "--betas", "0.8", "0.9"])
    cfg = config_from_args(args)
    assert cfg.recipe == "fashion-mnist" and cfg.epochs == 2 and cfg.hflip is True and cfg.lr == 3e-3
    assert cfg.model_kwargs == {"widths": [8, 8, 8, 8, 8]} and cfg.betas == (0.8, 0.9)
    seg = config_from_args(build_parser().parse_args(["train", "--recipe", "seg-scenes", "--eval-size", "96",
                                                      "--scale-range", "0.5", "1", "--img-size", "64"]))
    assert seg.eval_size == 96 and type(seg.eval_size) is int and seg.img_size == 64 and seg.scale_range == (0.5, 1.0)
    assert seg.model_kwargs == {"aux_channels": 64}  # the recipe's auxiliary head, a constructor argument
    other = config_from_args(build_parser().parse_args(["train", "--recipe", "seg-scenes", "--model",
                                                        "efficientvit_seg_b1_ade20k", "--model-kwargs",
                                                        "aux_channels=64"]))
    assert other.model_kwargs == {"aux_channels": 64} and other.model == "efficientvit_seg_b1_ade20k"


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


@pytest.mark.parametrize("argv, message", [
    (["train", "-b", "0"], "argument --batch-size/-b: 0 is out of range: give a value at least 1"),
    (["train", "-b", "-4"], "-4 is out of range"),
    (["train", "--eval-every-epochs", "0"], "--eval-every-epochs: 0 is out of range"),
    (["train", "--img-size", "-5"], "--img-size: -5 is out of range: give a value in [8, 4096]"),
    (["train", "--img-size", "0"], "--img-size: 0 is out of range"),
    (["train", "--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    (["train", "--epochs", "0"], "--epochs: 0 is out of range"),
    (["train", "--epochs", "-1"], "--epochs: -1 is out of range"),
    (["train", "--limit-train", "0"], "leave it out to use all images"),
    (["train", "--limit-train", "-5"], "--limit-train: -5 is out of range"),
    (["train", "--checkpoint-every-steps", "-1"], "--checkpoint-every-steps: -1 is out of range"),
    (["train", "--crop-pct", "2"], "--crop-pct: 2 is out of range: give a value in (0, 1]"),
    (["train", "--lr", "abc"], "'abc' is not a number"),
    (["train", "--name", "../x"], "is not a single folder name"),
    (["validate", "--checkpoint", "x", "-b", "0"], "0 is out of range"),
    (["validate", "--checkpoint", "x", "--crop-pct", "1.5"], "--crop-pct: 1.5 is out of range"),
    (["predict", "img.png", "--checkpoint", "x", "--topk", "-2"], "--topk: -2 is out of range"),
    (["predict", "img.png", "--checkpoint", "x", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_bad_numbers_and_names_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_bad_model_arguments_name_the_argument(tmp_path, capsys):
    capsys.readouterr()
    assert main(_TRAIN + ["--output", str(tmp_path), "--model-kwargs", "bogus=1"]) == 1
    assert "takes no constructor argument 'bogus'" in capsys.readouterr().err
    assert main(_TRAIN + ["--output", str(tmp_path), "--model-kwargs", "img_size=100000"]) == 1
    assert "img_size=100000 is not a plausible image size" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_on_cuda_without_cuda_says_so(trained_run, capsys):
    assert main(["predict", "x.png", "--checkpoint", str(trained_run), "--device", "cuda"]) == 1
    assert "no CUDA device is visible; use --device cpu" in capsys.readouterr().err


def test_interrupt_advises_resume_only_when_something_was_saved(tmp_path, capsys):
    import signal

    from qtvit.train import Callback

    class InterruptAtStart(Callback):  # interrupted before the first step
        def on_run_start(self, run, state):
            raise KeyboardInterrupt

    class InterruptAfterStep3(Callback):  # Ctrl-C pressed during step 3, as a user would
        def on_step_end(self, run, state, loss):
            if state.global_step == 3:
                signal.raise_signal(signal.SIGINT)

    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "early"], callbacks=[InterruptAtStart()]) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "--resume" not in err
    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "late"], callbacks=[InterruptAfterStep3()]) == 130
    err = capsys.readouterr().err
    assert f"checkpoint {tmp_path / 'late' / 'checkpoints' / 'step_00000003'} is saved" in err
    assert f"--resume {tmp_path / 'late'}" in err
    assert main(["train", "--resume", str(tmp_path / "late"), "--no-progress"]) == 0
    rows = (tmp_path / "late" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [10, 20]


def test_max_steps_is_not_inherited_by_a_resume(tmp_path, capsys):
    assert main(_TRAIN + ["--output", str(tmp_path), "--name", "smoke", "--max-steps", "2"]) == 0
    run = tmp_path / "smoke"
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "step_00000002").is_dir()
    args = build_parser().parse_args(["train", "--resume", str(run)])
    assert config_from_args(args).max_steps is None


def test_predict_streams_batches_with_overrides(trained_run, tmp_path, capsys):
    x, _ = load_fashion_mnist("test", SMALL_FMNIST)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(x[i].numpy()).save(paths[-1])
    assert main(["predict", *paths, "--checkpoint", str(trained_run), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    sizes = []

    def count(module, inputs):  # the batch sizes the loaded model (the module with a pretrained_cfg) is called with
        if hasattr(module, "pretrained_cfg"):
            sizes.append(len(inputs[0]))
    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        assert main(["predict", *paths, "--checkpoint", str(trained_run), "--json", "-b", "2"]) == 0
    finally:
        hook.remove()
    assert sizes == [2, 2, 1]
    streamed = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in streamed] == paths
    for a, b in zip(whole, streamed):
        assert a["top"][0][0] == b["top"][0][0] and a["top"][0][1] == pytest.approx(b["top"][0][1], abs=1e-5)
    assert main(["predict", paths[0], "--checkpoint", str(trained_run), "--img-size", "24", "--crop-pct", "0.5",
                 "--topk", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_validate_reads_a_plain_torch_file_and_overrides_the_preprocessing(trained_run, tmp_path, capsys):
    import torch

    from qtvit.train import load_model
    net = load_model(trained_run)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    assert main(["validate", "--checkpoint", str(tmp_path / "weights.pt"), "--model", "train_tiny", "--data",
                 SMALL_FMNIST, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 100
    assert main(["validate", "--checkpoint", str(trained_run), "--data", SMALL_FMNIST, "--json", "--img-size", "24",
                 "--crop-pct", "0.8"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 100


def test_img_size_is_recorded_and_a_resized_positional_embedding_is_reported(tmp_path, capsys):
    assert main(["train", "--model", "qtvit_pico", "--data", SMALL_FMNIST, "--img-size", "32", "--max-steps", "1",
                 "-b", "20", "--limit-train", "40", "--limit-eval", "20", "--threads", "1", "--no-progress",
                 "--output", str(tmp_path), "--name", "r"]) == 0
    out = capsys.readouterr().out
    assert "positional embedding is stored for 28 px" in out and "--model-kwargs pos_embed_size=32" in out
    from qtvit.checkpoints import read_config
    cfg = read_config(tmp_path / "r" / "checkpoints" / "step_00000001" / "model.safetensors")
    assert cfg["pretrained_cfg"]["input_size"] == [1, 32, 32]


def test_jobs_train_launcher_splits_the_recipe_batch_between_processes():
    """scripts/train_launch.sh, which both jobs source: QTVIT_PROCS 1-thread processes of GLOBAL / QTVIT_PROCS images
    under torchrun (2 by default), the plain command for one, a clear error where the batch does not split."""
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_launch.sh"

    def launch(procs: str, *args: str) -> subprocess.CompletedProcess:
        cmd = f'. "{script}" && train_launcher {" ".join(args)} && echo "${{launch[@]}}"'
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", **({"QTVIT_PROCS": procs} if procs else {})})

    assert launch("", "8", "--workers", "1").stdout.split() == [
        "torchrun", "--standalone", "--nproc_per_node", "2", "-m", "qtvit", "train", "--batch-size", "4",
        "--workers", "1"]
    assert launch("4", "128").stdout.split()[3::5] == ["4", "32"]  # --nproc_per_node 4 ... --batch-size 32
    assert launch("1", "128", "--workers", "1").stdout.split() == ["qtvit", "train"]
    bad = launch("3", "8")
    assert bad.returncode != 0 and "QTVIT_PROCS=3 does not divide the recipe's global batch 8" in bad.stderr
