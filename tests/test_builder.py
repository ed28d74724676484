"""create_model: registry lookup, argument passing, head dropping, in_chans adaptation, features_only, families."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qtvit
from qtvit import checkpoints
from qtvit.models._features import FeatureListNet

from _tiny_model import TinyNet, randomize, registered

from conftest import SHARED_FIXTURES as FIXTURES  # noqa: E402
X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny():
    with registered() as name:
        yield name


# ------------------------------------------------------------------------------------------------ building


def test_unknown_name_suggests(tiny):
    with pytest.raises(ValueError, match=r"unknown model 'tinynet_tset'.*did you mean tinynet_test"):
        qtvit.create_model("tinynet_tset")
    with pytest.raises(ValueError, match="needs a model name"):
        qtvit.create_model()


def test_records_architecture_and_args_on_a_copied_cfg(tiny):
    a = qtvit.create_model(tiny, num_classes=5, widths=(4, 4, 4))
    b = qtvit.create_model(tiny)
    assert a.pretrained_cfg["architecture"] == tiny and a.model_args == {"num_classes": 5, "widths": (4, 4, 4)}
    assert a.head.out_features == 5 and b.head.out_features == 1000  # the constructor's own default
    a.pretrained_cfg["mean"] = None
    assert b.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_kernel_passed_only_when_given():
    def tinynet_nokernel(pretrained=False, num_classes=1000, in_chans=3):
        return TinyNet(num_classes=num_classes, in_chans=in_chans)

    with registered(tinynet_nokernel) as name:
        assert isinstance(qtvit.create_model(name), TinyNet)
        with pytest.raises(TypeError, match="kernel"):
            qtvit.create_model(name, kernel="qt")
    with registered() as name:
        assert qtvit.create_model(name, kernel="qt").kernel_name == "qt"


# ------------------------------------------------------------------------------------------------ weights


def test_other_num_classes_drops_head_with_a_warning(tiny, tmp_path, caplog):
    src = randomize(TinyNet())
    torch.save({"state_dict": src.state_dict()}, tmp_path / "in1k.pt")
    with caplog.at_level("WARNING"):
        model = qtvit.create_model(tiny, checkpoint_path=tmp_path / "in1k.pt", num_classes=10)
    assert "dropped the checkpoint's classifier 'head' (1000 classes) because the model has 10" in caplog.text
    assert model.load_report.dropped == ["head.weight", "head.bias"] and model.load_report.ok
    assert model.head.weight.shape == (10, 8)
    assert torch.equal(model.stages[1][0].weight, src.stages[1][0].weight)
    # num_classes=0: a headless backbone from the same file
    assert isinstance(qtvit.create_model(tiny, checkpoint_path=tmp_path / "in1k.pt", num_classes=0).head, nn.Identity)


@pytest.mark.parametrize("in_chans", [1, 2, 6])
def test_in_chans_adapts_first_conv(tiny, tmp_path, in_chans):
    src = randomize(TinyNet())
    torch.save(src.state_dict(), tmp_path / "rgb.pt")
    model = qtvit.create_model(tiny, checkpoint_path=tmp_path / "rgb.pt", in_chans=in_chans).eval()
    assert model.load_report.adapted == ["stem.0.weight"]
    assert model.stem[0].weight.shape[1] == in_chans
    if in_chans == 1:  # a grey image gives what the RGB model gives for the same image in colour
        grey = X[:, :1]
        torch.testing.assert_close(model(grey), src(grey.expand(-1, 3, -1, -1)))
    elif in_chans == 6:  # an image stacked twice gives the RGB output
        torch.testing.assert_close(model(torch.cat([X, X], 1)), src(X))
    else:
        torch.testing.assert_close(model.stem[0].weight, src.stem[0].weight[:, :2] * 1.5)


def test_unfitting_checkpoint_raises_from_create_model(tiny, tmp_path):
    torch.save({"model": TinyNet(widths=(4, 8, 16)).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(checkpoints.CheckpointError, match=r"wide\.pth does not fit tinynet_test:.*shape mismatch"):
        qtvit.create_model(tiny, checkpoint_path=tmp_path / "wide.pth")


# ------------------------------------------------------------------------------------------------ features


def test_features_only(tiny):
    feats = qtvit.create_model(tiny, features_only=True)
    assert isinstance(feats, FeatureListNet)
    assert feats.feature_info.channels() == [4, 8, 8] and feats.feature_info.reduction() == [2, 4, 8]
    out = feats(X)
    assert [tuple(o.shape) for o in out] == [(2, 4, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    sel = qtvit.create_model(tiny, features_only=True, out_indices=(-1, 1))
    assert sel.out_indices == (1, 2) and sel.feature_info.channels() == [8, 8]
    assert sel.feature_info.reduction(0) == 4 and sel.feature_info.module_name() == ["stages.0", "stages.1"]
    assert [o.shape[-1] for o in sel(X)] == [4, 2]
    assert qtvit.create_model(tiny, features_only=True, out_indices=2).out_indices == (1, 2)
    with pytest.raises(ValueError, match=r"indices \(3,\) out of range: tinynet_test has 3 feature stages"):
        qtvit.create_model(tiny, features_only=True, out_indices=(3,))


def test_features_only_save_and_reload(tiny, tmp_path):
    feats = qtvit.create_model(tiny, features_only=True, out_indices=(1, 2))
    randomize(feats.model)
    qtvit.save_pretrained(feats, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["out_indices"] == [1, 2]
    again = qtvit.create_model(checkpoint_path=tmp_path, features_only=cfg["features_only"],
                               out_indices=cfg["out_indices"]).eval()
    assert isinstance(again, FeatureListNet) and again.out_indices == (1, 2)
    for a, b in zip(again(X), feats(X)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    fresh = qtvit.create_model(tiny, features_only=True)
    assert checkpoints.load_checkpoint(fresh, tmp_path).loaded == len(feats.model.state_dict())  # into the backbone
    assert _same(fresh.model, feats.model)


# ------------------------------------------------------------------------------------------------ the zoo


# known to be over 60 M parameters (SPEC.md): too slow to build and run here
_BIG = {"efficientvit_l2", "efficientvit_l3", "qtvit_5", "qtvit_6", "l2vit_base", "l2vit_base_384"}


# Segmentation models are built one by one in test_segmentation_models.py; here one per head type proves the contract.
# The detectors (no features_only: torchvision's detectors take images and targets) are test_detection_models.py's.
_SEG = ("efficientvit_seg_", "qtvit_seg_", "upernet_", "maskrcnn_", "retinanet_")
_ZOO = [n for n in qtvit.list_models() if not n.startswith(_SEG)] + ["efficientvit_seg_b0_cityscapes",
                                                                    "upernet_efficientvit_b0"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(reason="over 60M params")) if n in _BIG
                                  else n for n in _ZOO])
def test_zoo_features_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = qtvit.create_model(name).eval()
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > 60e6:
        pytest.skip("over 60M params")
    x = torch.randn(1, model.pretrained_cfg["input_size"][0], 64, 64)
    feats = FeatureListNet(model)
    with torch.no_grad():
        out = feats(x)
    info = feats.feature_info
    assert len(out) == len(info) == len(model.feature_info)
    for o, c, r in zip(out, info.channels(), info.reduction()):
        assert tuple(o.shape) == (1, c, math.ceil(64 / r), math.ceil(64 / r))
    if n_params > 15e6:  # the round trip is the same code for every size; the small ones prove it per family
        return
    qtvit.save_pretrained(model, tmp_path)
    again = qtvit.create_model(checkpoint_path=tmp_path)
    assert again.pretrained_cfg["architecture"] == name and again.load_report.ok
    assert type(again) is type(model) and _same(again, model)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _official(fixture: str):
    sys.path.insert(0, str(FIXTURES))
    try:
        from oracle_weights import fill, probe_input
    finally:
        sys.path.remove(str(FIXTURES))
    data = json.loads((FIXTURES / fixture).read_text())
    sd = fill({k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else
                   torch.zeros(s, dtype=torch.float64)) for k, s in data["keys"]})
    return data, sd, probe_input(data["resolution"])


def _needs(*names):
    missing = [n for n in names if n not in qtvit.list_models()]
    return pytest.mark.skipif(bool(missing), reason=f"{missing} not registered yet")


@pytest.mark.parametrize("name, fixture, wrap", [
    pytest.param("efficientvit_b1", "efficientvit_b1.json", "state_dict", marks=_needs("efficientvit_b1")),
    pytest.param("qtvit_1", "qtvit_1_r224.json", "state_dict", marks=_needs("qtvit_1")),
    pytest.param("l2vit_tiny", "l2vit_t_r224.json", "model_ema", marks=_needs("l2vit_tiny")),
])
def test_official_files_through_create_model(name, fixture, wrap, tmp_path):
    data, sd, x = _official(fixture)
    if wrap == "model_ema":  # the L2ViT release layout; the EMA weights are the ones chosen by default
        obj = {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "model_ema": sd, "epoch": "best-ema"}
    else:
        obj = {"state_dict": sd}
    torch.save(obj, tmp_path / "official.pt")
    model = qtvit.create_model(name, checkpoint_path=tmp_path / "official.pt").double().eval()
    report = model.load_report
    assert report.ok and report.new == [] and report.state_key == wrap and report.loaded == len(sd)
    if data["params"] > 20e6:  # the family's own tests check its logits; here: every tensor arrived, by name
        converted = type(model).checkpoint_filter_fn(sd, model)
        state = model.state_dict()
        assert converted.keys() == state.keys()
        assert all(torch.equal(state[k].float(), v.float()) for k, v in converted.items())  # loaded as float32
        return
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(data["logits"], dtype=torch.float64), rtol=1e-9, atol=1e-9)


@_needs("qtvit_1")
def test_efficientvit_checkpoint_into_qtvit_reports_new_keys(tmp_path, monkeypatch):
    b1, sd, _ = _official("efficientvit_b1.json")
    qt = json.loads((FIXTURES / "qtvit_1_r224.json").read_text())
    qt_only = {k for k, _ in qt["keys"]} - {k for k, _ in b1["keys"]}
    torch.save({"state_dict": sd}, tmp_path / "efficientvit_b1_r224.pt")
    cls = type(qtvit.create_model("qtvit_micro"))
    if not getattr(cls, "new_parameter_patterns", None):  # TODO(efficientvit.py): define it on the class
        monkeypatch.setattr(cls, "new_parameter_patterns", QT_PATTERNS, raising=False)
    model = qtvit.create_model("qtvit_1", checkpoint_path=tmp_path / "efficientvit_b1_r224.pt")
    report = model.load_report
    assert report.ok and report.missing == [] and report.unexpected == []
    # exactly the QT-only parameters (positional embeddings, shortcut BN, kernel scale), BN counters aside
    assert len(report.new) == len([k for k in qt_only if not k.endswith("num_batches_tracked")]) == 42
    assert report.loaded == len(b1["keys"])
    head = model.pretrained_cfg["classifier"]
    torch.testing.assert_close(model.get_submodule(head).weight.double(), sd["head.op_list.3.linear.weight"],
                               rtol=1e-7, atol=0)
    # the reverse is not a base checkpoint: the QT-only keys are unexpected in EfficientViT-B1
    _, qsd, _ = _official("qtvit_1_r224.json")
    with pytest.raises(checkpoints.CheckpointError, match=rf"does not fit efficientvit_b1: unexpected {len(qt_only)} "):
        checkpoints.load_checkpoint(qtvit.create_model("efficientvit_b1"), {"state_dict": qsd})


# what efficientvit.py is asked to declare: QT-ViT parameters that EfficientViT checkpoints lack
QT_PATTERNS = (r"\.attn\.pos_embed$", r"\.attn\.v_norm\.", r"\.attn\.kernel\.scale$")
