"""The training loop: learning, exact resume, atomic checkpoints on a full disk, wrong checkpoints, non-finite
steps, BN re-estimation."""
from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qtvit
from qtvit.checkpoints import CheckpointError
from qtvit.train import Callback, load_model, train
from qtvit.checkpoints import latest_checkpoint, save_weights
from conftest import SMALL_FMNIST, TinyNet, tiny_config


class _NaNOnce(TinyNet):
    """Returns NaN logits on its 3rd training forward, to make one step's gradients non-finite."""

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 3:
                out = out * float("nan")
        return out


def train_tiny_nan(num_classes: int = 10, in_chans: int = 1, pretrained: bool = False, **kw) -> nn.Module:
    return _NaNOnce(num_classes, in_chans, **kw)


@pytest.fixture(scope="module", autouse=True)
def nan_model(request):
    request.getfixturevalue("tiny_models")
    from qtvit.models import register_model, unregister_model
    register_model(train_tiny_nan)
    yield
    unregister_model("train_tiny_nan")


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_learns_and_writes_the_run_folder(tmp_path):
    r = train(tiny_config(tmp_path, epochs=4, lr=5e-3))
    run = Path(r["run_dir"])
    losses = [l for _, l in r["step_losses"]]
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10]) - 1.0  # the loss falls
    assert r["top1"] > 30.0  # 10 classes: chance is 10 %
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for key in ("top1", "top5", "train_loss", "eval_loss", "lr", "images_per_s", "peak_memory_mb", "skipped_steps"):
        assert key in rows[-1]
    assert rows[-1]["top5"] >= rows[-1]["top1"] and rows[-1]["eval_images"] == 100
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,lr,train_loss")
    assert json.loads((run / "args.json").read_text())["model"] == "train_tiny"
    assert (run / "best" / "model.safetensors").is_file() and latest_checkpoint(run).name == "step_00000040"
    best = json.loads((run / "best" / "config.json").read_text())
    assert best["top1"] == max(row["top1"] for row in rows) and best["pretrained_cfg"]["label_names"][9] == "Ankle boot"
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        train(tiny_config(tmp_path, epochs=1))  # the same run folder again: nothing is overwritten


def test_resume_continues_with_the_same_loss_curve(tmp_path):
    # EMA, drop path, mixup/cutmix and random crops all draw random numbers: their states must be restored
    extra = dict(epochs=2, model_ema=True, model_ema_warmup_steps=3, drop_path=0.2, mixup=0.4, cutmix=0.4,
                 bn_reestimate_images=40)
    full = train(tiny_config(tmp_path, name="full", **extra))
    # checkpoints at steps 7, 10 (end of epoch 1), 14 and 16 (--max-steps); resuming from step 14 as after a
    # crash there: the work of steps 15-16 is redone, mid-epoch 2
    first = train(tiny_config(tmp_path, name="crash", checkpoint_every_steps=7, max_steps=16, keep_checkpoints=2,
                              **extra))
    assert first["stopped"] and latest_checkpoint(tmp_path / "crash").name == "step_00000016"
    step14 = tmp_path / "crash" / "checkpoints" / "step_00000014"
    # the training state holds plain types only: it loads without unpickling arbitrary objects
    assert torch.load(step14 / "train_state.pt", weights_only=True)["run"]["global_step"] == 14
    rest = train(tiny_config(tmp_path, name="crash", checkpoint_every_steps=7, resume=str(step14), **extra))
    ref = dict(full["step_losses"])
    assert len(ref) == 20
    assert [s for s, _ in rest["step_losses"]] == list(range(15, 21))
    for s, loss in first["step_losses"] + rest["step_losses"]:
        assert loss == pytest.approx(ref[s], abs=1e-6), f"step {s}"
    a, b = _params(full["model"]), _params(rest["model"])
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert [h["top1"] for h in rest["history"]] == [h["top1"] for h in full["history"]]
    assert [h["ema_top1"] for h in rest["history"]] == [h["ema_top1"] for h in full["history"]]
    # epoch 2's row covers the whole epoch, not only the 6 steps after the resume
    assert rest["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == pytest.approx([h["train_loss"] for h in full["history"]], abs=1e-6)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(tiny_config(tmp_path, checkpoint_every_steps=5, max_steps=5))
    run = tmp_path / "run"
    before = (latest_checkpoint(run) / "model.safetensors").read_bytes()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match=r"disk full .* free space or change --output") as e:
        train(tiny_config(tmp_path, checkpoint_every_steps=5, max_steps=10, resume=str(run)))
    assert e.value.errno == errno.ENOSPC
    assert latest_checkpoint(run).name == "step_00000005"
    assert (latest_checkpoint(run) / "model.safetensors").read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written folders
    monkeypatch.undo()
    r = train(tiny_config(tmp_path, checkpoint_every_steps=5, max_steps=10, resume=str(run)))  # and it resumes
    assert r["step_losses"][0][0] == 6


def test_checkpoint_of_another_model_or_class_count(tmp_path):
    m = qtvit.create_model("train_tiny", num_classes=10, in_chans=1)
    path = save_weights(m, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="holds weights of model 'train_tiny', not 'train_tiny_gn'"):
        load_model(path, model="train_tiny_gn")
    with pytest.raises(CheckpointError, match="trained for 10 classes, not 5"):
        load_model(path, num_classes=5)
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(10, 16\) vs model \(5, 16\)"):
        qtvit.checkpoints.load_checkpoint(TinyNet(num_classes=5), path)
    net = load_model(path)
    assert net.head.out_features == 10 and torch.equal(net.head.weight, m.head.weight) and not net.training
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    r = train(tiny_config(tmp_path, model="train_tiny_nan", epochs=1))
    assert r["skipped_steps"] == 1 and r["history"][-1]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in r["model"].state_dict().values() if v.is_floating_point())
    assert r["top1"] is not None and r["top1"] >= 0


def test_bn_reestimation_is_the_plain_average():
    from qtvit.data import build_batches, open_dataset, resolve_data_config
    from qtvit.train import reestimate_bn_on
    info = open_dataset(SMALL_FMNIST)
    model = TinyNet()
    cfg = resolve_data_config(model, 1)
    batches = build_batches(info, train=False, data_cfg=cfg, batch_size=50)
    bn = model.stem[1]
    bn.running_mean.fill_(5.0)
    seen = reestimate_bn_on(model, batches, cfg, torch.device("cpu"), 100)
    assert seen == 100 and bn.momentum == 0.1  # momentum restored
    from qtvit.data import normalize
    x = torch.cat([normalize(xb, cfg.mean, cfg.std) for xb, _ in batches.iterate(0)])[:100]
    feats = model.stem[0](x)
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(tmp_path, amp):
    ref = train(tiny_config(tmp_path, name="fp32", epochs=1))
    r = train(tiny_config(tmp_path, name=amp, epochs=1, amp=amp, channels_last=True))
    assert r["skipped_steps"] == 0 and len(r["step_losses"]) == 10
    for (_, a), (_, b) in zip(ref["step_losses"], r["step_losses"]):
        assert abs(a - b) < 0.05  # half-precision rounding only


class CtrlCAt(Callback):
    """Press Ctrl-C (SIGINT) during training step `step`, as a user would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run, state, loss):
        if state.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_that_resumes_the_same_curve(tmp_path):
    from qtvit.train import TrainingInterrupted
    full = train(tiny_config(tmp_path, name="full", mixup=0.4))
    with pytest.raises(TrainingInterrupted) as e:
        train(tiny_config(tmp_path, name="cut", mixup=0.4), callbacks=[CtrlCAt(13)])
    assert e.value.checkpoint == tmp_path / "cut" / "checkpoints" / "step_00000013"  # saved after step 13
    rest = train(tiny_config(tmp_path, name="cut", mixup=0.4, resume=str(tmp_path / "cut")))
    ref = dict(full["step_losses"])
    assert [s for s, _ in rest["step_losses"]] == list(range(14, 21))
    assert all(loss == pytest.approx(ref[s], abs=1e-6) for s, loss in rest["step_losses"])
    assert rest["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], abs=1e-6)


def test_max_steps_ends_like_a_finished_run(tmp_path, capsys):
    from qtvit.train import validate
    r = train(tiny_config(tmp_path, max_steps=3))
    run = tmp_path / "run"
    assert r["stopped"] and r["global_step"] == 3 and r["top1"] is not None
    assert latest_checkpoint(run).name == "step_00000003"  # something to resume from
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["stopped"] and summary["top1"] == r["top1"]
    assert "stopped at --max-steps 3" in capsys.readouterr().out
    v = validate(run, data=SMALL_FMNIST, device="cpu")  # the run folder's weights reload alone
    assert v["images"] == 100 and v["top1"] == pytest.approx(r["top1"])
    rest = train(tiny_config(tmp_path, resume=str(run)))
    assert rest["step_losses"][0][0] == 4 and rest["global_step"] == 20 and not rest["stopped"]


def test_the_dataset_is_read_once_per_split(tmp_path, monkeypatch):
    import qtvit.data.info as data  # where DatasetInfo.arrays reads the idx files
    reads = []
    original = data.load_fashion_mnist
    monkeypatch.setattr(data, "load_fashion_mnist",
                        lambda split, *a, **k: reads.append(split) or original(split, *a, **k))
    train(tiny_config(tmp_path, epochs=1, bn_reestimate_images=40))  # train, eval and BN batches
    assert sorted(reads) == ["test", "train"]


def test_saved_weights_describe_model_data_size_and_labels(tmp_path):
    from qtvit.checkpoints import read_config
    train(tiny_config(tmp_path, epochs=1, img_size=20, crop_pct=0.9))
    config = read_config(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    pcfg = config["pretrained_cfg"]
    assert config["architecture"] == "train_tiny" and config["model_args"]["num_classes"] == 10
    assert pcfg["input_size"] == [1, 20, 20] and pcfg["crop_pct"] == 0.9 and pcfg["dataset"] == "fashion-mnist"
    assert pcfg["label_names"][0] == "T-shirt/top" and len(pcfg["mean"]) == 1
    net = load_model(tmp_path / "run")
    assert net.pretrained_cfg["input_size"] == [1, 20, 20]


@pytest.mark.parametrize("option, message", [
    (dict(epochs=0), "epochs must be finite and at least 1, got 0"),
    (dict(batch_size=-4), "batch_size must be finite and at least 1, got -4"),
    (dict(limit_train=0), "leave it out to use all images"),
    (dict(checkpoint_every_steps=-1), "checkpoint_every_steps must be finite and at least 0, got -1"),
    (dict(crop_pct=2.0), r"crop_pct must be finite and in \(0, 1\], got 2.0"),
    (dict(img_size=0), r"img_size must be finite and in \[8, 4096\], got 0"),
    (dict(name="../x"), "not a single folder name"),
    (dict(model_kwargs={"bogus": 1}), "takes no constructor argument 'bogus'"),
    (dict(model_kwargs={"img_size": 100000}), "img_size=100000 is not a plausible image size"),
    (dict(device="gpu"), "unknown device 'gpu'"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, **option))
    assert not (tmp_path / "run").exists() and not (tmp_path.parent / "x").exists()


def test_resume_refuses_a_pickled_training_state(tmp_path):
    import numpy as np
    train(tiny_config(tmp_path, max_steps=2))
    ckpt = latest_checkpoint(tmp_path / "run")
    # what an older qtvit wrote: numpy's RNG state as pickled objects, which weights_only loading refuses
    torch.save({"rng": [{"numpy": np.random.get_state()}]}, ckpt / "train_state.pt")
    with pytest.raises(CheckpointError, match="written by an older qtvit .* cannot be loaded safely"):
        train(tiny_config(tmp_path, resume=str(tmp_path / "run")))


def test_callbacks_see_every_step_epoch_and_the_end(tmp_path):
    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_run_start(self, run, state):
            self.calls.append(("start", state.global_step))

        def on_step_start(self, run, state):
            self.calls.append(("step", state.global_step))

        def on_step_end(self, run, state, loss):
            self.calls.append(("stepped", state.global_step, loss))

        def on_epoch_end(self, run, state, row):
            self.calls.append(("epoch", row["epoch"], row["top1"]))

        def on_run_end(self, run, summary):
            self.calls.append(("end", summary["global_step"]))
    rec = Record()
    r = train(tiny_config(tmp_path), callbacks=[rec])
    steps = [c for c in rec.calls if c[0] == "stepped"]
    assert rec.calls[0] == ("start", 0) and rec.calls[-1] == ("end", 20)
    assert [(s, loss) for _, s, loss in steps] == r["step_losses"]  # the loss the loop records, after its step
    assert [c[1] for c in rec.calls if c[0] == "step"] == list(range(20))
    assert [c[1:] for c in rec.calls if c[0] == "epoch"] == [(h["epoch"], h["top1"]) for h in r["history"]]


def test_register_and_unregister_a_model():
    from qtvit.models import register_model, unregister_model

    def my_tiny_for_registry(pretrained=False, **kw):
        return TinyNet(**kw)
    register_model(my_tiny_for_registry)
    try:
        assert "my_tiny_for_registry" in qtvit.list_models("my_tiny_*")
        with pytest.raises(ValueError, match="registered twice; unregister_model"):
            register_model(my_tiny_for_registry)
    finally:
        unregister_model(my_tiny_for_registry)
    assert qtvit.list_models("my_tiny_*") == []
    with pytest.raises(ValueError, match="'my_tiny_for_registry' is not registered"):
        unregister_model("my_tiny_for_registry")
    with pytest.raises(ValueError, match="unknown model"):
        qtvit.create_model("my_tiny_for_registry")
