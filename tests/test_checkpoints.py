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
    report = load_checkpoint(dst, src.state_dict(), strict=False)
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


def test_classifier_size_mismatch_hint_and_adapt():
    src = randomize(TinyNet(num_classes=1000)).state_dict()
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(1000, 8\) vs model \(10, 8\).*drops it"):
        load_checkpoint(TinyNet(num_classes=10), src)
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
