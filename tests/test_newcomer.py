"""What a newcomer meets first: timm-style preprocessing, the model list, the help texts, the OpenMP wait policy of
the command, and the announced, well-named build of qt's fused CPU kernel."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qtvit
from qtvit import _threads
from qtvit.attention import cpu_fused
from qtvit.cli import build_parser, main
from qtvit.data import create_transform, resolve_data_config

_SRC = str(Path(__file__).resolve().parents[1] / "src")


# ------------------------------------------------------------------------------------------ preprocessing, models
def test_resolve_data_config_and_create_transform_give_the_models_normalised_input():
    model = qtvit.create_model("efficientvit_b1")
    cfg = resolve_data_config(model=model)
    assert dict(cfg) == dict(input_size=(3, 224, 224), crop_pct=0.95, interpolation="bicubic",
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    tf = create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    x = tf(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # by hand: short side to ceil(224 / 0.95) = 236 (bicubic), centre crop 224, then (x / 255 - mean) / std
    r = image.resize((315, 236), Image.BICUBIC)
    left, top = (315 - 224) // 2, (236 - 224) // 2
    ref = np.asarray(r.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    ref = (ref - np.array(cfg.mean, dtype=np.float32)) / np.array(cfg.std, dtype=np.float32)
    torch.testing.assert_close(x, torch.from_numpy(ref).permute(2, 0, 1), rtol=0, atol=1e-5)
    # any PIL mode in: grey and RGBA images become the model's 3 channels
    assert tf(image.convert("L")).shape == tf(image.convert("RGBA")).shape == (3, 224, 224)
    with pytest.raises(TypeError, match="takes a PIL image"):
        tf(torch.zeros(3, 8, 8))


def test_create_transform_for_training_and_grey_models():
    tf = create_transform(input_size=(1, 28, 28), is_training=True, mean=(0.5,), std=(0.25,))
    x = tf(Image.new("RGB", (64, 48), (255, 255, 255)))
    assert x.shape == (1, 28, 28)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # white: (1 - 0.5) / 0.25
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        create_transform(interpolation="cubic")


def test_list_models_pretrained_lists_only_models_with_weights():
    with_weights = qtvit.list_models(pretrained=True)
    assert {"efficientvit_b1", "qtvit_1", "l2vit_tiny", "efficientvit_seg_b1_ade20k"} <= set(with_weights)
    assert not {"efficientvit_b0", "qtvit_4", "qtvit_pico", "l2vit_nano", "efficientvit_seg_b0_ade20k",
                "qtvit_seg_1_ade20k", "upernet_qtvit_1"} & set(with_weights)
    assert set(with_weights) < set(qtvit.list_models())
    small = qtvit.create_model("efficientvit_seg_b0_cityscapes").pretrained_cfg  # one built: it names its url
    assert small["url"].endswith("efficientvit_seg_b0_cityscapes.pt")
    assert qtvit.list_models("qtvit_*", pretrained=True) == ["qtvit_1", "qtvit_2", "qtvit_3", "qtvit_5", "qtvit_6"]


def test_list_models_command(capsys):
    assert main(["list-models", "l2vit*", "--pretrained"]) == 0
    assert capsys.readouterr().out.split() == ["l2vit_base", "l2vit_base_384", "l2vit_small", "l2vit_tiny"]
    assert main(["list-models", "nothing*"]) == 1
    assert "no model matches" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ help
def _options(parser, path=("qtvit",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, path + (name,))
        elif action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS \
                and not isinstance(action, argparse._VersionAction):
            yield " ".join(path), parser, action


def test_every_option_has_help_and_says_its_default():
    missing, no_default = [], []
    for command, parser, action in _options(build_parser()):
        if not action.help:
            missing.append(f"{command} {action.option_strings[0]}")
        text = parser.formatter_class("x")._get_help_string(action)
        if action.default not in (None, False) and "default" not in text:
            no_default.append(f"{command} {action.option_strings[0]}")
    assert not missing and not no_default, (missing, no_default)


def test_train_help_lists_fine_tuning_and_where_runs_go(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--pretrained" in text and "--initial-checkpoint PATH" in text and "run folder" in text
    assert "--seg-jitter, --no-seg-jitter segmentation: photometric jitter of the training crops (default: on)" in text
    assert "(default: results/models_cpu.csv)" not in text
    for command in (["benchmark", "models"], ["export"], ["figure"]):  # short, with a link to the guide
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert len(out.splitlines()) < 80 and "--goals" not in out and "--side-by-side" not in out, command


# ------------------------------------------------------------------------------------------ OpenMP wait policy
@pytest.mark.parametrize("orig, argv, expected", [
    (["python", "-m", "qtvit", "train"], ["-m"], ["train"]),
    (["python", "-u", "-m", "qtvit", "validate", "--device", "cpu"], ["-m"], ["validate", "--device", "cpu"]),
    (["python", "/venv/bin/qtvit", "predict", "a.png"], ["/venv/bin/qtvit", "predict", "a.png"], ["predict", "a.png"]),
    (["python", "-m", "pytest"], ["-m"], None),
    (["python", "script.py"], ["script.py"], None),
])
def test_cli_args_recognise_the_qtvit_command(orig, argv, expected):
    assert _threads.cli_args(orig, argv) == expected


def test_wait_policy_only_for_cpu_runs_without_a_user_policy():
    assert _threads.wants_passive(["train", "--device", "cpu"], {"CUDA_VISIBLE_DEVICES": "0"})
    assert not _threads.wants_passive(["train", "--device", "cuda"], {})
    assert not _threads.wants_passive(["train", "--device=cuda:1"], {})
    assert not _threads.wants_passive(["train"], {"OMP_WAIT_POLICY": "ACTIVE"})
    assert _threads.wants_passive(["train"], {"CUDA_VISIBLE_DEVICES": ""})  # auto with no GPU visible


def _run_cli(args, **env):
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, sys, runpy; sys.argv = ['qtvit', *sys.argv[1:]]; import qtvit; " \
           "print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": _SRC, "CUDA_VISIBLE_DEVICES": "", **env})


def test_the_command_sets_the_policy_before_torch_and_says_so_once():
    r = _run_cli(["train", "--device", "cpu"])
    assert r.stdout.strip() == "PASSIVE", r.stderr
    assert r.stderr.count("OMP_WAIT_POLICY=PASSIVE") == 1
    r = _run_cli(["train"], OMP_WAIT_POLICY="ACTIVE")
    assert r.stdout.strip() == "ACTIVE" and "OMP_WAIT_POLICY" not in r.stderr
    r = _run_cli(["list-models"])
    assert r.stdout.strip() == "None" and r.stderr == ""


def test_policy_is_set_before_torch_loads_openmp():
    # OpenMP reads the policy once, when torch loads it: the policy must be in the environment at torch's import
    code = "\n".join([
        "import importlib.abc, os, sys",
        "sys.argv = ['qtvit', 'train']",
        "class Spy(importlib.abc.MetaPathFinder):",
        "    def find_spec(self, name, path, target=None):",
        "        if name == 'torch': print('torch imported with', os.environ.get('OMP_WAIT_POLICY'))",
        "sys.meta_path.insert(0, Spy())",
        "import qtvit",
    ])
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": _SRC, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "torch imported with PASSIVE", r.stderr


# ------------------------------------------------------------------------------------------ the fused kernel's build
def test_build_name_covers_include_paths_and_compiler(monkeypatch):
    a = cpu_fused._build_name(["/env_a/include"])
    assert a == cpu_fused._build_name(["/env_a/include"])
    assert a != cpu_fused._build_name(["/env_b/include"])
    monkeypatch.setenv("CXX", "clang++-that-does-not-exist")
    assert cpu_fused._build_name(["/env_a/include"]) != a


def test_a_build_is_announced_and_timed_on_stderr(monkeypatch, tmp_path, capsys):
    import torch.utils.cpp_extension as ext
    calls = []

    def fake_load_inline(name, build_directory, **kwargs):
        calls.append(name)
        (Path(build_directory) / f"{name}.so").write_bytes(b"")  # what a build leaves
        return object()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(ext, "load_inline", fake_load_inline)
    for attr, value in (("_module", None), ("_failed", False)):
        monkeypatch.setattr(cpu_fused, attr, value)
    assert cpu_fused.build()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("qtvit: building the fused CPU kernel for qt once into")
    assert "QTVIT_NO_CPP=1" in err[0] and err[1].startswith("qtvit: fused CPU kernel built in ")
    monkeypatch.setattr(cpu_fused, "_module", None)
    assert cpu_fused.build() and capsys.readouterr().err == ""  # built already: loaded without a word
    assert len(calls) == 2 and (tmp_path / calls[0]).is_dir()


def test_the_switch_turns_the_kernel_off(monkeypatch):
    for attr, value in (("_module", None), ("_failed", False)):
        monkeypatch.setattr(cpu_fused, attr, value)
    monkeypatch.setenv(cpu_fused.NO_BUILD_ENV, "1")
    assert not cpu_fused.available()


# ------------------------------------------------------------------------------------------ small fixes
def test_l2vit_fuse_twice_changes_nothing():
    torch.manual_seed(0)
    model = qtvit.create_model("l2vit_nano").eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        ref = model(x)
        model.fuse()
        model.fuse()
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_figure_attention_reads_a_one_channel_checkpoint_without_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    weights = qtvit.save_pretrained(qtvit.create_model("qtvit_nano", in_chans=1, num_classes=10), tmp_path / "w")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "maps.png"
    assert main(["figure", "attention", "--checkpoint", str(weights), "--image", str(image), "--img-size", "32",
                 "--kernels", "relu", "qt", "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main(["figure", "attention", "--pretrained", "--out", str(out)]) == 1
    assert "--pretrained needs --model" in capsys.readouterr().err


def test_small_models_share_the_zoos_defaults():
    # 3 channels and 1000 classes, as every other model; Fashion-MNIST passes in_chans=1, num_classes=10
    for name in ("l2vit_nano", "qtvit_nano", "efficientvit_pico"):
        model = qtvit.create_model(name)
        assert (model.in_chans, model.num_classes, model.pretrained_cfg["input_size"][0]) == (3, 1000, 3), name
        grey = qtvit.create_model(name, in_chans=1, num_classes=10)
        assert grey.pretrained_cfg["input_size"][0] == 1 and grey(torch.randn(2, 1, 28, 28)).shape == (2, 10)
