"""Fine-tuning from the command line: `qtvit train --initial-checkpoint / --pretrained` (timm's names), the classifier
reset when the class count differs, and `validate` / `predict --pretrained`."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import qtvit
from qtvit.cli import build_parser, config_from_args, main
from qtvit.data import open_dataset
from qtvit.train.setup import _model_and_data
from conftest import SMALL_FMNIST

_PICO = ["--recipe", "fashion-mnist", "--data", SMALL_FMNIST, "--epochs", "1", "--batch-size", "50", "--threads",
         "1", "--no-progress"]


@pytest.fixture(scope="module")
def pico_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    assert main(["train", *_PICO, "--max-steps", "2", "--output", str(out), "--name", "src"]) == 0
    return out / "src"


def _start(argv):
    """The model a `qtvit train` command line starts from (before any step)."""
    cfg = config_from_args(build_parser().parse_args(["train", *argv]))
    return _model_and_data(cfg, open_dataset(SMALL_FMNIST), lambda *a: None)


def test_initial_checkpoint_of_another_class_count_keeps_the_body_and_resets_the_classifier(pico_run, caplog):
    source = qtvit.create_model(checkpoint_path=pico_run)
    with caplog.at_level(logging.WARNING, logger="qtvit.checkpoints"):
        model, _, num_classes = _start([*_PICO, "--initial-checkpoint", str(pico_run), "--num-classes", "12"])
    assert num_classes == 12 and model.head.fc.out_features == 12
    said = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert len(said) == 1 and "10 classes" in said[0] and "12" in said[0]
    src, new = source.state_dict(), model.state_dict()
    body = [k for k in src if not k.startswith("head.fc")]
    assert body and all(torch.equal(src[k], new[k]) for k in body)
    fresh = _start(_PICO)[0].state_dict()  # the same seed without the checkpoint: the body differs
    assert any(not torch.equal(src[k], fresh[k]) for k in body if src[k].is_floating_point())


def test_initial_checkpoint_trains_from_the_command_line(pico_run, tmp_path):
    assert main(["train", *_PICO, "--initial-checkpoint", str(pico_run), "--num-classes", "12", "--max-steps", "1",
                 "--output", str(tmp_path), "--name", "ft"]) == 0
    saved = json.loads((tmp_path / "ft" / "args.json").read_text())
    assert saved["initial_checkpoint"] == str(pico_run)
    assert qtvit.create_model(checkpoint_path=tmp_path / "ft").head.fc.out_features == 12


def test_pretrained_and_initial_checkpoint_exclude_each_other(pico_run, tmp_path, capsys):
    assert main(["train", *_PICO, "--pretrained", "--initial-checkpoint", str(pico_run), "--output",
                 str(tmp_path)]) == 1
    # the library names the fields; the command words them as its flags
    assert "--pretrained and --initial-checkpoint both name the starting weights: give one of them" in \
        capsys.readouterr().err


@pytest.fixture
def official_pico(tmp_path, monkeypatch):
    """qtvit_pico's 'official weights': a file the download step hands back (no network in tests)."""
    src = qtvit.create_model("qtvit_pico", num_classes=1000, in_chans=3)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "pico_official.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    monkeypatch.setattr("qtvit.models._builder.pretrained_file", lambda name, cfg: str(path))
    return src.eval()


def test_train_pretrained_starts_from_the_official_weights(official_pico):
    model, _, num_classes = _start([*_PICO, "--pretrained"])  # 1000 classes and RGB -> 10 and grey
    src, new = official_pico.state_dict(), model.state_dict()
    assert num_classes == 10 and model.head.fc.out_features == 10
    body = [k for k in src if not k.startswith(("head.fc", "stem.conv."))]
    assert all(torch.equal(src[k], new[k]) for k in body)
    # the first conv adapted to one channel: the RGB filters summed
    torch.testing.assert_close(new["stem.conv.weight"], src["stem.conv.weight"].sum(1, keepdim=True))


def test_predict_pretrained_uses_the_official_weights(official_pico, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 30, 90)).save(image)
    assert main(["predict", str(image), "--pretrained", "--model", "qtvit_pico", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    cfg = qtvit.data.resolve_data_config(model=official_pico)
    with torch.no_grad():
        probs = official_pico(qtvit.data.create_transform(**cfg)(Image.open(image))[None]).softmax(-1)[0]
    assert [p for _, p in top] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)


def test_pretrained_without_a_model_says_what_to_pass(capsys):
    assert main(["predict", "x.png", "--pretrained"]) == 1
    assert "--pretrained with --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["validate", "--pretrained", "--checkpoint", "x"])  # one source of weights


def test_validate_pretrained_scores_the_official_weights(official_pico, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    assert main(["validate", "--pretrained", "--model", "qtvit_pico", "--data", str(tmp_path / "data"), "--workers",
                 "0", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["images"] == 6 and r["checkpoint"] == "official weights" and r["model"] == "qtvit_pico"
    # the same score by hand: the model's eval preprocessing on each image, labels a = 0, b = 1
    tf = qtvit.data.create_transform(**qtvit.data.resolve_data_config(model=official_pico))
    paths = sorted((tmp_path / "data" / "val").glob("*/*.png"))
    with torch.no_grad():
        logits = official_pico(torch.stack([tf(Image.open(p)) for p in paths]))
    labels = torch.tensor([0 if p.parent.name == "a" else 1 for p in paths])
    assert r["top1"] == pytest.approx(100 * float((logits.argmax(-1) == labels).float().mean()))


def test_a_run_that_never_leaves_its_warm_up_says_so(tmp_path, capsys):
    assert main(["train", *_PICO, "--warmup-epochs", "2", "--max-steps", "1", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--warmup-epochs 2.0 covers all 1 epochs" in out and "lower --warmup-epochs or raise --epochs" in out
    assert main(["train", *_PICO, "--max-steps", "1", "--output", str(tmp_path), "--name", "ok"]) == 0
    assert "covers all" not in capsys.readouterr().out
