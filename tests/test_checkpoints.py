"""Checkpoint formats, unwrapping, key checks, adaptation and the safetensors round trip."""
import argparse
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qtvit
from qtvit import checkpoints, save_pretrained
from qtvit.checkpoints import CheckpointError, adapt_input_conv, load_checkpoint

from _tiny_model import TinyNet, randomize, registered, to_official

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny():
    with registered() as name:
        yield name


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_torch_formats_load_exactly(tmp_path, wrap):
    src = randomize(TinyNet())
    sd = src.state_dict()
    obj = {"plain": sd, "state_dict": {"state_dict": to_official(sd)}, "model": {"model": sd, "epoch": 3},
           "ddp": {"state_dict": {"module." + k: v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "ck.pt")
    dst = TinyNet()
    report = load_checkpoint(dst, tmp_path / "ck.pt")
    assert _same(src, dst)
    assert report.ok and report.loaded == len(sd) and report.new == []
    assert report.state_key == (None if wrap == "plain" else "model" if wrap == "model" else "state_dict")


def test_l2vit_style_file_prefers_ema(tmp_path):
    raw, ema = randomize(TinyNet(), 1), randomize(TinyNet(), 2)
    # L2ViT's save_model stores the argparse Namespace too: weights_only loading must still accept it
    torch.save({"model": raw.state_dict(), "model_ema": ema.state_dict(), "optimizer": {"state": {}},
                "epoch": "best-ema", "args": argparse.Namespace(lr=1e-3, model="L2ViT_Tiny")}, tmp_path / "ck.pth")
    dst = TinyNet()
    assert load_checkpoint(dst, tmp_path / "ck.pth").state_key == "model_ema"
    assert _same(dst, ema)
    assert load_checkpoint(dst, tmp_path / "ck.pth", use_ema=False).state_key == "model"
    assert _same(dst, raw)
    torch.save({"model": raw.state_dict()}, tmp_path / "noema.pth")
    with pytest.raises(CheckpointError, match=r"noema.pth has no EMA weights"):
        load_checkpoint(dst, tmp_path / "noema.pth", use_ema=True)


def test_efficientvit_trainer_ema_layout(tmp_path):
    # mit-han-lab's trainer writes {"state_dict": ..., "ema": {decay: state_dict}}
    raw, ema = randomize(TinyNet(), 1), randomize(TinyNet(), 2)
    torch.save({"state_dict": to_official(raw.state_dict()), "ema": {0.9998: to_official(ema.state_dict())}},
               tmp_path / "ck.pt")
    dst = TinyNet()
    assert load_checkpoint(dst, tmp_path / "ck.pt").state_key == "ema" and _same(dst, ema)
    assert load_checkpoint(dst, tmp_path / "ck.pt", use_ema=False).state_key == "state_dict" and _same(dst, raw)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        torch.save(TinyNet().state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*broken\.pt.*corrupt or truncated"):
        load_checkpoint(TinyNet(), path)


def test_corrupt_safetensors_and_missing_file(tmp_path):
    save_pretrained(TinyNet(), tmp_path / "d", config={"architecture": "x"})
    f = tmp_path / "d" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"cannot read safetensors file .*model\.safetensors"):
        load_checkpoint(TinyNet(), tmp_path / "d")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt does not exist"):
        load_checkpoint(TinyNet(), tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        load_checkpoint(TinyNet(), tmp_path)


def test_unsafe_pickle_and_wrong_content(tmp_path):
    torch.save({"state_dict": TinyNet().state_dict(), "cfg": _Opaque()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"unsafe\.pt holds .* refuses, such as test_checkpoints\._Opaque"):
        load_checkpoint(TinyNet(), tmp_path / "unsafe.pt")
    torch.save({"optimizer": {}, "epoch": 1}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match=r"no weights found in checkpoint .*opt\.pt.*'optimizer', 'epoch'"):
        load_checkpoint(TinyNet(), tmp_path / "opt.pt")


class _Opaque:
    pass


# ------------------------------------------------------------------------------------------------ key checks


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path):
    sd = TinyNet(widths=(4, 8, 16)).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["stem.1.bias"]
    torch.save({"state_dict": sd}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(TinyNet(), tmp_path / "other.pt")
    msg = str(e.value)
    assert "other.pt does not fit TinyNet" in msg
    assert "missing 1 [stem.1.bias]" in msg and "unexpected 1 [extra.weight]" in msg
    assert "stages.1.0.weight: checkpoint (16, 8, 3, 3) vs model (8, 8, 3, 3)" in msg
    assert "another model or variant" in msg


def test_unrecognised_format_says_so():
    with pytest.raises(CheckpointError, match="No key in common"):
        load_checkpoint(TinyNet(), {"encoder.w": torch.zeros(1)})


def test_non_strict_loads_what_fits():
    src = randomize(TinyNet(widths=(4, 8, 16)))
    dst = TinyNet()
    before = dst.stages[1][0].weight.clone()
    report = load_checkpoint(dst, src.state_dict(), adapt=False, strict=False)
    assert {m[0] for m in report.mismatched} >= {"stages.1.0.weight", "head.weight"}
    assert torch.equal(dst.stem[0].weight, src.stem[0].weight)  # fitting keys loaded
    assert torch.equal(dst.stages[1][0].weight, before)  # mismatched ones left alone
    assert report.loaded == len(src.state_dict()) - len(report.mismatched)


def test_base_checkpoint_into_model_with_new_parameters(caplog):
    src = randomize(TinyNet())
    dst = TinyNet(pos_embed=True)
    with caplog.at_level("INFO", logger="qtvit.checkpoints"):
        report = load_checkpoint(dst, {"state_dict": to_official(src.state_dict())})
    assert sorted(report.new) == ["stage_pos_embed", "stem_pos_embed"]
    assert report.missing == [] and report.unexpected == [] and report.ok
    assert "2 new parameters" in caplog.text
    assert "new parameters (kept at init): 2 [stage_pos_embed, stem_pos_embed]" in str(report)
    assert torch.equal(dst.head.weight, src.head.weight) and dst.stage_pos_embed.abs().sum() == 0


def test_partial_new_parameters_are_missing():
    # a checkpoint that has some pos_embed keys is not a base checkpoint: the absent ones are really missing
    sd = randomize(TinyNet(pos_embed=True)).state_dict()
    del sd["stem_pos_embed"]
    with pytest.raises(CheckpointError, match=r"missing 1 \[stem_pos_embed\]"):
        load_checkpoint(TinyNet(pos_embed=True), sd)


def test_adapt_is_the_default():
    src = randomize(TinyNet(num_classes=1000)).state_dict()
    report = load_checkpoint(TinyNet(num_classes=10), src)
    assert report.dropped == ["head.weight", "head.bias"] and report.ok
    import inspect
    assert list(inspect.signature(load_checkpoint).parameters) == ["model", "path", "adapt", "strict", "use_ema"]


def test_classifier_size_mismatch_hint_and_adapt():
    src = randomize(TinyNet(num_classes=1000)).state_dict()
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(1000, 8\) vs model \(10, 8\).*drops it"):
        load_checkpoint(TinyNet(num_classes=10), src, adapt=False)
    dst = TinyNet(num_classes=10)
    report = load_checkpoint(dst, src, adapt=True)
    assert report.dropped == ["head.weight", "head.bias"] and report.ok


# ------------------------------------------------------------------------------------------------ first conv


def test_adapt_input_conv_preserves_responses():
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    grey = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    # one channel: grey input gives the response to the same image in colour
    torch.testing.assert_close(F.conv2d(grey, adapt_input_conv(1, w)), F.conv2d(grey.expand(-1, 3, -1, -1), w))
    # six channels: an image stacked twice gives the original response (repeat, then scale by 3/6)
    rgb = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(torch.cat([rgb, rgb], 1), adapt_input_conv(6, w)), F.conv2d(rgb, w))
    w2 = adapt_input_conv(2, w)
    torch.testing.assert_close(w2, w[:, :2] * 1.5)
    assert adapt_input_conv(3, w) is w


# ------------------------------------------------------------------------------------------------ save / load


def test_save_pretrained_round_trip(tiny, tmp_path):
    model = randomize(qtvit.create_model(tiny, num_classes=7, widths=[4, 6, 12], act_layer=nn.GELU, kernel="relu"))
    out = save_pretrained(model, tmp_path / "run")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # no temporary files left
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == tiny
    assert cfg["model_args"]["num_classes"] == 7 and cfg["model_args"]["in_chans"] == 3
    assert cfg["model_args"]["kernel"] == "relu" and cfg["model_args"]["widths"] == [4, 6, 12]
    assert cfg["model_args"]["act_layer"] == {"__type__": "torch.nn.modules.activation:GELU"}
    assert "url" not in cfg["pretrained_cfg"] and cfg["pretrained_cfg"]["crop_pct"] == 0.9

    expected = model(X)
    for rebuilt in (qtvit.create_model(tiny, checkpoint_path=out),  # name + directory
                    qtvit.create_model(checkpoint_path=out / "model.safetensors"),  # the file alone
                    qtvit.create_model(checkpoint_path=out)):
        assert rebuilt.model_args["act_layer"] is nn.GELU and rebuilt.model_args["widths"] == [4, 6, 12]
        assert rebuilt.kernel_name == "relu" and isinstance(rebuilt.stem[2], nn.GELU)
        assert rebuilt.load_report.ok and rebuilt.load_report.dropped == []
        torch.testing.assert_close(rebuilt.eval()(X), expected, rtol=0, atol=0)


def test_save_records_reset_classifier_and_tied_tensors(tiny, tmp_path):
    model = randomize(qtvit.create_model(tiny, tied=True))
    assert not model.transposed.is_contiguous()
    model.reset_classifier(5)
    model.head_alias = nn.Linear(8, 5)
    model.head_alias.weight = model.head.weight
    save_pretrained(model, tmp_path)
    rebuilt = qtvit.create_model(checkpoint_path=tmp_path)
    assert rebuilt.model_args["num_classes"] == 5  # read from the weights, not the stale creation args
    assert _same(model, rebuilt)


def test_save_without_architecture_and_unencodable_args(tmp_path):
    with pytest.raises(ValueError, match=r"config=\{'architecture'"):
        save_pretrained(TinyNet(), tmp_path)
    model = TinyNet()
    model.model_args = {"act_layer": lambda: nn.ReLU()}
    with pytest.raises(ValueError, match=r"cannot record the constructor argument act_layer="):
        save_pretrained(model, tmp_path, config={"architecture": "x"})


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    model = qtvit.create_model(tiny)
    save_pretrained(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.save, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(randomize(model), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_refuses_foreign_types_in_config(tiny, tmp_path):
    save_pretrained(qtvit.create_model(tiny), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_args"]["act_layer"] = {"__type__": "os:system"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="refusing to import 'os:system'"):
        qtvit.create_model(checkpoint_path=tmp_path)


def test_mismatch_names_the_saved_architecture(tiny, tmp_path):
    save_pretrained(qtvit.create_model(tiny, widths=(4, 8, 16)), tmp_path)
    with pytest.raises(CheckpointError, match=r"does not fit TinyNet: .*It was saved from tinynet_test"):
        load_checkpoint(TinyNet(), tmp_path)
    assert checkpoints.read_config(tmp_path)["pretrained_cfg"]["num_classes"] == 1000


def test_reads_qtvit_train_weights(tiny, tmp_path):
    # qtvit.train writes safetensors whose metadata "qtvit" names model, classes, channels and constructor kwargs
    from safetensors.torch import save_file

    src = randomize(TinyNet(num_classes=4, widths=(4, 6, 6)))
    meta = {"model": tiny, "num_classes": 4, "in_chans": 3, "model_kwargs": {"widths": [4, 6, 6]}}
    save_file(src.state_dict(), tmp_path / "model.safetensors", metadata={"qtvit": json.dumps(meta)})
    model = qtvit.create_model(checkpoint_path=tmp_path / "model.safetensors")
    assert _same(model, src) and model.model_args == {"widths": [4, 6, 6], "num_classes": 4, "in_chans": 3}


# ------------------------------------------------------------------------------------------------ one format


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_save_weights_carries_the_config_and_rebuilds(tiny, tmp_path):
    model = randomize(qtvit.create_model(tiny, num_classes=4, widths=[4, 6, 6]))
    model.pretrained_cfg.update(label_names=list("abcd"), dataset="fashion-mnist", recipe="fmnist")
    path = checkpoints.save_weights(model, tmp_path / "w" / "model.safetensors")
    assert path == tmp_path / "w" / "model.safetensors" and os.listdir(path.parent) == ["model.safetensors"]
    assert path.stat().st_mode & 0o777 == _umask_mode()  # the umask's mode, not mkstemp's 0600
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert set(meta) == {"format", checkpoints.CONFIG_KEY} and checkpoints.CONFIG_KEY == "qtvit_config"
    cfg = checkpoints.read_config(path)
    assert cfg == json.loads(meta["qtvit_config"]) and cfg["architecture"] == tiny
    assert cfg["model_args"] == {"num_classes": 4, "in_chans": 3, "widths": [4, 6, 6]}
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["label_names"] == list("abcd") and pcfg["dataset"] == "fashion-mnist" and pcfg["recipe"] == "fmnist"
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["mean"] == [0.5] * 3 and "file" not in pcfg
    rebuilt = qtvit.create_model(checkpoint_path=path).eval()
    assert rebuilt.pretrained_cfg["label_names"] == list("abcd")
    torch.testing.assert_close(rebuilt(X), model(X), rtol=0, atol=0)


class _DDP(nn.Module):  # the one attribute of DistributedDataParallel that matters here
    def __init__(self, module):
        super().__init__()
        self.module = module


class _Compiled(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._orig_mod = module


def test_model_config_unwraps_ddp_compile_and_features(tiny, tmp_path):
    model = qtvit.create_model(tiny, num_classes=3)
    plain = checkpoints.model_config(model)
    assert checkpoints.model_config(_DDP(_Compiled(model))) == plain
    feats = qtvit.create_model(tiny, num_classes=3, features_only=True, out_indices=(1, 2))
    cfg = checkpoints.model_config(feats)
    assert cfg["architecture"] == tiny and cfg["features_only"] is True and cfg["out_indices"] == [1, 2]
    out = checkpoints.save_weights(_DDP(model), tmp_path / "m.safetensors")
    assert "module.stem.0.weight" not in load_file_keys(out) and "stem.0.weight" in load_file_keys(out)


def load_file_keys(path):
    from safetensors.torch import load_file
    return set(load_file(str(path)))


def test_layer_types_round_trip_including_partial(tiny, tmp_path):
    import functools
    act = functools.partial(nn.GELU, approximate="tanh")
    model = qtvit.create_model(tiny, act_layer=act)
    cfg = checkpoints.model_config(model)
    assert cfg["model_args"]["act_layer"] == {"__type__": "torch.nn.modules.activation:GELU",
                                              "kwargs": {"approximate": "tanh"}}
    back = checkpoints.decode_model_args(cfg)["act_layer"]
    assert back.func is nn.GELU and back.keywords == {"approximate": "tanh"} and back.args == ()
    save_pretrained(model, tmp_path)
    assert qtvit.create_model(checkpoint_path=tmp_path).stem[2].approximate == "tanh"


@pytest.mark.parametrize("name", ["torch.serialization:os.abort", "os:system", "builtins:eval", "torch:load",
                                  "qtvit.hub:download", "torch.nn.modules.activation:GELU.__init__",
                                  "subprocess:Popen", "torch.nn:modules.activation.GELU", 42])
def test_decode_refuses_names_outside_the_allow_list(tiny, tmp_path, monkeypatch, name):
    called = []
    monkeypatch.setattr(os, "abort", lambda *a: called.append(a))
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(CheckpointError, match=rf"refusing to import {repr(name)[:20]}.*not one of the layer types"):
        checkpoints.decode_model_args({"architecture": tiny, "model_args": {"act_layer": {"__type__": name}}})
    save_pretrained(qtvit.create_model(tiny), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_args"]["act_layer"] = {"__type__": name}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="refusing to import"):
        qtvit.create_model(checkpoint_path=tmp_path)
    assert called == []


def test_decode_renames_img_size_for_efficientvit_family():
    for arch in ("qtvit_1", "efficientvit_b1"):
        args = checkpoints.decode_model_args({"architecture": arch, "model_args": {"img_size": 28, "kernel": "qt"}})
        assert args == {"pos_embed_size": 28, "kernel": "qt"}
    assert checkpoints.decode_model_args({"architecture": "l2vit_tiny", "model_args": {"img_size": 28}}) == {
        "img_size": 28}
    with pytest.raises(CheckpointError, match="malformed layer type"):
        checkpoints.decode_model_args({"architecture": "x", "model_args": {"a": {"__type__": "x", "extra": 1}}})


def test_encode_refuses_types_outside_the_allow_list(tmp_path):
    model = TinyNet()
    model.model_args = {"act_layer": nn.Conv2d}
    with pytest.raises(ValueError, match=r"cannot record the constructor argument act_layer=.*LAYER_TYPES"):
        save_pretrained(model, tmp_path, config={"architecture": "x"})


# ------------------------------------------------------------------------------------------------ training checkpoints


def _state(step):
    return {"optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "global_step": step, "history": [{"top1": 50.0}], "best": {"top1": 1.5, "which": "model"},
            "rng": [{"torch": torch.get_rng_state(), "numpy": ["MT19937", list(range(4)), 1, 0, 0.0]}],
            "note": None, "flag": True}


def test_save_checkpoint_layout_latest_keep_and_resume(tiny, tmp_path):
    model, ema = randomize(qtvit.create_model(tiny), 1), randomize(qtvit.create_model(tiny), 2)
    run = tmp_path / "run"
    (run / "checkpoints" / ".step_00000003.killed").mkdir(parents=True)  # a write killed earlier
    (run / "checkpoints" / ".step_00000003.killed" / "model.safetensors").write_bytes(b"half")
    first = checkpoints.save_checkpoint(run, 5, model, _state(5), ema=ema, keep=2)
    assert first == run / "checkpoints" / "step_00000005"
    assert sorted(os.listdir(first)) == ["ema.safetensors", "model.safetensors", "train_state.pt"]
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000005"]  # the stale temp folder is gone
    assert all((first / f).stat().st_mode & 0o777 == _umask_mode() for f in os.listdir(first))
    checkpoints.save_checkpoint(run, 10, model, _state(10), keep=2)
    checkpoints.save_checkpoint(run, 15, model, _state(15), keep=2)
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000010", "step_00000015"]
    assert (run / "checkpoints" / "latest").read_text() == "step_00000015\n"
    assert checkpoints.latest_checkpoint(run) == run / "checkpoints" / "step_00000015"
    state = checkpoints.load_train_state(run / "checkpoints" / "step_00000015")
    assert state["global_step"] == 15 and torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    assert state["rng"][0]["numpy"] == ["MT19937", [0, 1, 2, 3], 1, 0, 0.0] and state["note"] is None
    assert checkpoints.load_train_state(run)["global_step"] == 15  # a run folder: its latest
    # re-saving a step replaces it whole; a pointer that names no checkpoint falls back to the newest complete one
    checkpoints.save_checkpoint(run, 15, model, _state(16), ema=ema, keep=2)
    assert checkpoints.load_train_state(run)["global_step"] == 16
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000010", "step_00000015"]
    (run / "checkpoints" / "latest").write_text("../../elsewhere\n")
    assert checkpoints.latest_checkpoint(run) == run / "checkpoints" / "step_00000015"
    dst = qtvit.create_model(tiny)
    assert load_checkpoint(dst, first.parent / "step_00000015").ok and _same(dst, model)
    assert load_checkpoint(dst, run / "checkpoints" / "step_00000015", use_ema=True).state_key == "ema"
    assert _same(dst, ema)
    assert checkpoints.latest_checkpoint(tmp_path / "nothing") is None


def test_save_checkpoint_refuses_what_cannot_be_read_back(tiny, tmp_path):
    import numpy as np
    model = qtvit.create_model(tiny)
    bad = dict(_state(3), rng=[{"numpy": ("MT19937", np.zeros(3, np.uint32))}])
    msg = r"train_state\['rng'\]\[0\]\['numpy'\]\[1\] is a numpy\.ndarray.*torch\.from_numpy"
    with pytest.raises(TypeError, match=msg):
        checkpoints.save_checkpoint(tmp_path, 3, model, bad)
    with pytest.raises(TypeError, match=r"train_state\['cfg'\] is a .*_Opaque"):
        checkpoints.save_checkpoint(tmp_path, 3, model, {"cfg": _Opaque()})
    assert not (tmp_path / "checkpoints").exists()


def test_resolve_weights_paths_and_errors(tiny, tmp_path):
    model = qtvit.create_model(tiny)
    run = tmp_path / "run"
    ck = checkpoints.save_checkpoint(run, 7, model, _state(7))
    assert checkpoints.resolve_weights(ck) == ck / "model.safetensors"
    assert checkpoints.resolve_weights(run) == ck / "model.safetensors"  # no best/ yet
    best = checkpoints.save_weights(model, run / "best" / "model.safetensors")
    assert checkpoints.resolve_weights(run) == best
    assert checkpoints.resolve_weights(run, prefer="latest") == ck / "model.safetensors"
    assert checkpoints.resolve_weights(best) == best
    assert checkpoints.resolve_weights(save_pretrained(model, tmp_path / "sp")) == tmp_path / "sp" / "model.safetensors"
    with pytest.raises(ValueError, match="prefer='newest'"):
        checkpoints.resolve_weights(run, prefer="newest")
    with pytest.raises(FileNotFoundError, match=r"missing does not exist"):
        checkpoints.resolve_weights(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no model\.safetensors .*checkpoints/"):
        checkpoints.resolve_weights(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no train_state\.pt in .*empty; --resume takes"):
        checkpoints.load_train_state(tmp_path / "empty")


def _legacy_run(tmp_path, name):
    """A run folder exactly as qtvit.train wrote it before the one format (metadata key "qtvit", numpy RNG)."""
    import numpy as np
    from safetensors.torch import save_file

    src = randomize(TinyNet(num_classes=4, widths=(4, 6, 6)))
    meta = {"model": name, "num_classes": 4, "in_chans": 3, "img_size": 32, "crop_pct": 1.0,
            "interpolation": "bicubic", "mean": [0.3] * 3, "std": [0.2] * 3, "class_names": list("wxyz"),
            "dataset": "folder", "recipe": "fmnist", "model_kwargs": {"widths": [4, 6, 6]}}
    run = tmp_path / "old_run"
    step = run / "checkpoints" / "step_00000012"
    step.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, step / "model.safetensors", metadata={"format": "pt", "qtvit": json.dumps(meta)})
    torch.save({"global_step": 12, "rng": [{"numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
                "history": [], "lr": np.float64(0.5)}, step / "train_state.pt")
    (run / "checkpoints" / "latest").write_text("step_00000012\n")
    (run / "best").mkdir()
    save_file(sd, run / "best" / "model.safetensors", metadata={"format": "pt", "qtvit": json.dumps(meta)})
    (run / "best" / "config.json").write_text(json.dumps({**meta, "top1": 80.0, "epoch": 2}))
    return run, src


def test_legacy_run_folders_still_load_and_resume(tiny, tmp_path):
    import numpy as np

    run, src = _legacy_run(tmp_path, tiny)
    for path in (run, run / "best", run / "checkpoints" / "step_00000012",
                 run / "checkpoints" / "step_00000012" / "model.safetensors"):
        cfg = checkpoints.read_config(path)
        assert cfg["architecture"] == tiny and cfg["model_args"] == {"widths": [4, 6, 6], "num_classes": 4,
                                                                     "in_chans": 3}, path
        assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32] and cfg["pretrained_cfg"]["label_names"] == list(
            "wxyz") and cfg["pretrained_cfg"]["mean"] == [0.3] * 3 and cfg["pretrained_cfg"]["recipe"] == "fmnist"
        model = qtvit.create_model(checkpoint_path=path)
        assert _same(model, src) and model.pretrained_cfg["label_names"] == list("wxyz")
    state = checkpoints.load_train_state(run)
    assert state["global_step"] == 12 and state["lr"] == 0.5
    kind, keys, pos, *_ = state["rng"][0]["numpy"]
    assert kind == "MT19937" and isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.shape == (624,)


# ------------------------------------------------------------------------------------------------ full disk


class _FillingDisk:
    """The disk-usage probe of a disk that fills up during the write: room at first, ``left`` bytes after."""

    def __init__(self, left):
        self.left, self.full = left, False

    def __call__(self, path):
        return self.left if self.full else 10 ** 12

    def torch_save(self, obj, f, *a, **k):  # what torch.save raises on a full disk: the errno is lost
        self.full = True
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_full_disk_during_checkpoint_keeps_the_previous(tiny, tmp_path, monkeypatch):
    import errno

    from qtvit import _io
    model = qtvit.create_model(tiny)
    run = tmp_path / "run"
    checkpoints.save_checkpoint(run, 5, model, _state(5))
    disk = _FillingDisk(2048)
    monkeypatch.setattr(checkpoints.save.torch, "save", disk.torch_save)
    monkeypatch.setattr(_io, "disk_free", disk)
    with pytest.raises(OSError) as e:
        checkpoints.save_checkpoint(run, 10, model, _state(10))
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert f"disk full while writing {run / 'checkpoints' / 'step_00000010'}" in msg
    assert f"{run / 'checkpoints'} has 2.0 KiB free" in msg and "needs about" in msg
    assert "previous checkpoint step_00000005 is intact" in msg and "free space or change --output" in msg
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000005"]  # no half-written folder
    assert checkpoints.load_train_state(run)["global_step"] == 5


def test_atomic_write_explains_torch_save_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    from qtvit import _io
    target = tmp_path / "state.pt"
    target.write_bytes(b"previous")
    disk = _FillingDisk(100)
    monkeypatch.setattr(_io, "disk_free", disk)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        try:  # torch.save on a full disk: the stream error, then the container's "unexpected pos"
            raise RuntimeError("basic_ios::clear: iostream error")
        except RuntimeError:
            disk.torch_save(None, tmp)

    with pytest.raises(OSError) as e:
        _io.atomic_write(target, write, size=400_000)
    assert e.value.errno == errno.ENOSPC and "inline_container" in str(e.value)
    assert f"{tmp_path} has 100 B free and this write needs about 390.6 KiB" in str(e.value)
    assert "previous file, if any, is intact" in str(e.value)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["state.pt"]


def test_disk_full_detection(tmp_path, monkeypatch):
    import errno

    from qtvit import _io
    from safetensors import SafetensorError

    def fail(exc):
        def write(tmp):
            raise exc
        return write

    # safetensors keeps the OS's words; plenty of free space does not hide them
    with pytest.raises(OSError, match=r"disk full while writing .*w\.safetensors") as e:
        _io.atomic_write(tmp_path / "w.safetensors", fail(SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left\" })")))
    assert e.value.errno == errno.ENOSPC
    # other failures pass through unchanged, even with little space left
    monkeypatch.setattr(_io, "disk_free", lambda path: 10)
    with pytest.raises(TypeError, match="not a tensor"):
        _io.atomic_write(tmp_path / "x", fail(TypeError("not a tensor")), size=5)
    # a known size above the free space fails before writing anything
    called = []
    with pytest.raises(OSError, match=r"has 10 B free and this write needs about 1\.0 KiB"):
        _io.atomic_write(tmp_path / "y", lambda tmp: called.append(tmp), size=1024)
    assert called == [] and os.listdir(tmp_path) == []
