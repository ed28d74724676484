"""L2ViT: parity with the official code (float64), the timm model API, any input size, and the fused form."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qtvit.models.l2vit as l2vit
from qtvit.layers.l2vit_blocks import FusedLocalConcentration, LocalConcentration, depthwise_conv2d
from qtvit.models.l2vit import L2Vit

DATA = Path(__file__).parent / "data" / "l2vit"
from conftest import SHARED_FIXTURES as SHARED, rel_err  # noqa: E402
from oracle_weights import fill as _fill, probes  # noqa: E402  (a copy of the team's fixtures/oracle_weights.py)
NAMES = ["l2vit_tiny", "l2vit_small", "l2vit_base", "l2vit_base_384", "l2vit_nano"]


def _nano(**kw):
    """l2vit_nano as the tests use it: grey 28 px images, 10 classes."""
    return l2vit.l2vit_nano(**{"in_chans": 1, "num_classes": 10, **kw})


def _official_state_dict(keys: list) -> dict[str, torch.Tensor]:
    # the fixtures were made from a float32 state_dict filled then cast to float64: rebuild it the same way
    sd = {n: torch.zeros(s, dtype=torch.long) if n.endswith("num_batches_tracked") else torch.zeros(s) for n, s in keys}
    return _fill(sd)


def _load_official(name: str, keys: list) -> L2Vit:
    with torch.device("meta"):  # skip the random init: every tensor comes from the state_dict
        model = getattr(l2vit, name)()
    model.load_state_dict(L2Vit.checkpoint_filter_fn(_official_state_dict(keys), model), assign=True)
    return model.double().eval()


def _probes(feats: list[torch.Tensor]) -> dict[str, list]:
    """The shared fixtures' ``oracle_weights.probes`` of stage maps stage0..stage3."""
    return probes({f"stage{i}": f for i, f in enumerate(feats)})


def _filled(model: nn.Module) -> nn.Module:
    """Random but deterministic weights and BN statistics (the default init has trivial BN stats)."""
    model.load_state_dict(_fill(model.state_dict()))
    return model


# ---------------------------------------------------------------- parity with the official code


def _check_parity(name: str, fixture: dict, x: torch.Tensor, tol: float = 1e-9) -> None:
    model = _load_official(name, fixture["keys"])
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        logits = model.forward_head(final)
    ref = torch.tensor(fixture["logits"], dtype=torch.float64)
    assert logits.shape == ref.shape
    assert rel_err(logits, ref) < tol, f"{name}: logits differ from the official code by {rel_err(logits, ref):.3g}"
    for stage, p in _probes(feats).items():
        ref = torch.tensor(fixture["probes"][stage], dtype=torch.float64)
        assert rel_err(torch.tensor(p, dtype=torch.float64), ref) < tol, f"{name} {stage}"


@pytest.mark.skipif(not (SHARED / "l2vit_t_r224.json").exists(), reason="shared fixtures not available")
def test_tiny_matches_official_fixture_r224():
    sys.path.insert(0, str(SHARED))
    try:
        import oracle_weights
    finally:
        sys.path.remove(str(SHARED))
    fixture = json.loads((SHARED / "l2vit_t_r224.json").read_text())
    assert fixture["params"] == 28596781
    _check_parity("l2vit_tiny", fixture, oracle_weights.probe_input(fixture["resolution"]))


@pytest.mark.parametrize("file", sorted(p.name for p in DATA.glob("*.json")))
def test_matches_official_code(file):
    """Small-input fixtures of the official code (tests/data/l2vit/README.md): S, B, B-384, and T at 70x50."""
    fixture = json.loads((DATA / file).read_text())
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, *fixture["input_hw"], generator=g, dtype=torch.float64)
    _check_parity(fixture["model"], fixture, x)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("name,count", [
    ("l2vit_tiny", 28_596_781), ("l2vit_small", 50_199_157), ("l2vit_base", 88_577_188),
    ("l2vit_base_384", 88_577_188), ("l2vit_nano", 2_601_463),  # nano: 3 channels, 1000 classes (2_346_745 at 1, 10)
])
def test_param_counts(name, count):
    with torch.device("meta"):
        model = getattr(l2vit, name)()
    assert sum(p.numel() for p in model.parameters()) == count


def test_variant_configs():
    with torch.device("meta"):
        base384, base, nano = l2vit.l2vit_base_384(), l2vit.l2vit_base(), _nano()
    assert base384.stages[0].blocks[0].attn.window_size == 12
    assert base.stages[0].blocks[0].attn.window_size == 7
    assert [len(s.blocks) for s in base.stages] == [2, 2, 18, 2]
    assert all(b.attn.head_dim == 32 for s in base.stages for b in s.blocks)
    assert base384.pretrained_cfg["input_size"] == (3, 384, 384) and base384.pretrained_cfg["crop_pct"] == 1.0
    assert base.pretrained_cfg["crop_pct"] == 0.875 and base.pretrained_cfg["interpolation"] == "bicubic"
    assert nano.in_chans == 1 and nano.num_classes == 10 and nano.pretrained_cfg["url"] is None


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_and_features(name):
    with torch.device("meta"):
        model = getattr(l2vit, name)()
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg["classifier"]], nn.Linear) and modules[cfg["classifier"]] is model.get_classifier()
    assert isinstance(modules[cfg["first_conv"]], nn.Conv2d)
    assert modules[cfg["first_conv"]].in_channels == cfg["input_size"][0] == model.in_chans
    assert cfg["num_classes"] == model.num_classes
    if cfg["url"] is not None:
        assert cfg["url"].startswith("https://github.com/ChuanyangZheng/L2ViT/releases/download/v1.0/")
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["module"] for f in model.feature_info] == [f"stages.{i}" for i in range(4)]
    assert model.feature_info[-1]["num_chs"] == model.num_features == model.head_hidden_size


# ---------------------------------------------------------------- forward / backward, any size


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = getattr(l2vit, name)(num_classes=7)
    size = 28 if name == "l2vit_nano" else 64
    x = torch.randn(2, model.in_chans, size, size)  # batch 2: nano's last map is 1x1 and its LCM BN trains on it
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no or non-finite gradient for {missing[:5]}"


@pytest.mark.parametrize("hw", [(64, 96), (70, 50), (37, 23), (7, 5), (28, 28)])
def test_any_input_size(hw):
    torch.manual_seed(0)
    model = _nano().eval()
    x = torch.randn(2, 1, *hw)
    feats = model.forward_intermediates(x, intermediates_only=True)
    h, w = -(-hw[0] // 4), -(-hw[1] // 4)  # the stem pads to a multiple of 4, each downsample rounds up
    for i, f in enumerate(feats):
        assert f.shape == (2, model.feature_info[i]["num_chs"], h, w)
        h, w = -(-h // 2), -(-w // 2)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # a batch is processed image by image (no leakage through padding or attention)
    assert torch.allclose(model(x[1:]), y[1:], atol=1e-5)


def test_bad_input_raises():
    model = _nano()
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="expects images"):
        model(torch.randn(28, 28))


# ---------------------------------------------------------------- timm API


def test_forward_intermediates():
    torch.manual_seed(0)
    model = _nano().eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert len(normed) == 1
        torch.testing.assert_close(normed[0], final)
        last2 = model.forward_intermediates(x, indices=[-2, 0], intermediates_only=True)
        torch.testing.assert_close(last2[0], feats[0])
        torch.testing.assert_close(last2[1], feats[2])
        early, part = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(part[0], feats[1])
        torch.testing.assert_close(early, feats[1])  # stopped before the last stage: not normed
        nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0].permute(0, 3, 1, 2), feats[2])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="last 5"):
        model.forward_intermediates(x, indices=5)


def test_prune_intermediate_layers():
    torch.manual_seed(0)
    model = _nano().eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, 1], prune_norm=True) == [0, 1]
        assert len(model.stages) == 2 and len(model.feature_info) == 2
        assert isinstance(model.head, nn.Identity)
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_reset_classifier():
    torch.manual_seed(0)
    model = _nano().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, 256)
        model.reset_classifier(5)
        assert model.num_classes == 5 and model.get_classifier().out_features == 5
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        torch.testing.assert_close(model(x), pre)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = _nano(drop_path_rate=0.1).train()
    x = torch.randn(2, 1, 28, 28)

    def run():
        model.zero_grad()
        torch.manual_seed(1)  # same drop-path draws in both runs
        loss = model(x).logsumexp(-1).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_ref, grads_ref = run()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    loss_ckpt, grads_ckpt = run()
    torch.testing.assert_close(loss_ckpt, loss_ref, rtol=0, atol=1e-6)
    for n in grads_ref:
        torch.testing.assert_close(grads_ckpt[n], grads_ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_grad_checkpointing_with_intermediates():
    torch.manual_seed(0)
    model = _nano().train()
    x = torch.randn(2, 1, 40, 36)
    ref = model.forward_intermediates(x, intermediates_only=True)
    model.set_grad_checkpointing(True)
    got = model.forward_intermediates(x, intermediates_only=True)
    assert len(got) == 4
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    got[-1].sum().backward()
    assert model.stem.conv1.weight.grad is not None and torch.isfinite(model.stem.conv1.weight.grad).all()


def test_autocast_bf16_forward():
    torch.manual_seed(0)
    model = _nano().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_depthwise_conv2d_float64_path():
    """The float64 CPU shift-add path equals the conv, values and gradients."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 7, padding=3, groups=6).double()
    x = torch.randn(2, 6, 9, 5, dtype=torch.float64, requires_grad=True)
    y = depthwise_conv2d(x, conv)
    ref = conv(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    grads_ref = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = _nano(drop_path_rate=0.5)
    x = torch.randn(4, 1, 28, 28)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


# ---------------------------------------------------------------- checkpoint names


def test_checkpoint_filter_fn_map():
    fixture = json.loads((DATA / "l2vit_small_r64x64.json").read_text())
    official = {n: torch.zeros(s) for n, s in fixture["keys"]}
    with torch.device("meta"):
        model = l2vit.l2vit_small()
    converted = L2Vit.checkpoint_filter_fn(official, model)
    assert set(converted) == set(model.state_dict())
    assert converted["stages.2.blocks.5.attn.kernel.temperature"] is official["stages.2.5.attn.temperature"]
    assert converted["stem.bn2.running_var"] is official["downsample_layers.0.proj.proj.4.running_var"]
    assert converted["stages.3.downsample.conv.weight"] is official["downsample_layers.3.proj.weight"]
    assert converted["stages.1.blocks.1.norm_lcm.bias"] is official["stages.1.1.norm3.bias"]
    assert converted["stages.0.blocks.0.cpe2.conv.weight"] is official["stages.0.0.cpe.1.proj.weight"]
    # a qtvit-named dict passes through untouched
    assert L2Vit.checkpoint_filter_fn(converted, model) is converted
    with pytest.raises(ValueError, match="unexpected key"):
        L2Vit.checkpoint_filter_fn({**official, "stages.0.0.attn.relative_position_bias_table": torch.zeros(1)})


def test_other_kernel_in_global_blocks():
    torch.manual_seed(0)
    model = _nano(kernel="relu").eval()
    assert model.kernel == "relu"
    assert not any(n.endswith("temperature") for n, _ in model.named_parameters())
    assert torch.isfinite(model(torch.randn(1, 1, 28, 28))).all()
    default = _nano()
    temps = [p for n, p in default.named_parameters() if n.endswith("attn.kernel.temperature")]
    assert len(temps) == 4 and all(torch.allclose(t, torch.full_like(t, 32 ** -0.5)) for t in temps)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        _nano(kernel="nope")


def test_kernel_options_reach_the_global_blocks_and_stay_json_friendly():
    import qtvit

    model = qtvit.create_model("l2vit_nano", kernel="qt", kernel_options=dict(scale=2.0))
    scales = [m.scale.item() for n, m in model.named_modules() if n.endswith("attn.kernel")]
    assert scales == [2.0] * 4 and model.kernel == "qt"
    assert model.model_args == {"kernel": "qt", "kernel_options": {"scale": 2.0}}
    default = qtvit.create_model("l2vit_nano", kernel_options=dict(den_min=1.0))
    assert [m.den_min for n, m in default.named_modules() if n.endswith("attn.kernel")] == [1.0] * 4
    with pytest.raises(ValueError, match="kernel_options must be a dict"):
        qtvit.create_model("l2vit_nano", kernel_options=[1])


def test_fuse_takes_the_common_signature_and_inference_form_copies():
    from qtvit.models.inference import inference_form

    torch.manual_seed(0)
    model = _filled(_nano()).eval()
    x = torch.randn(2, 1, 28, 28)
    fused = inference_form(model, (28, 28))
    assert fused is not model and isinstance(model.stem.bn1, nn.BatchNorm2d)  # the original keeps its BatchNorms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) and not fused.training
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
    assert model.fuse(input_size=None) is model


# ---------------------------------------------------------------- inference form


@pytest.mark.parametrize("hw", [(28, 28), (37, 23)])
def test_fuse_matches_eager(hw):
    torch.manual_seed(0)
    model = _filled(_nano()).eval()
    x = torch.randn(2, 1, *hw)
    with torch.no_grad():
        ref = model(x)
        model.fuse()
        got = model(x)
    assert isinstance(model.stem.bn1, nn.Identity) and isinstance(model.stem.bn2, nn.Identity)
    assert all(isinstance(b.lcm, FusedLocalConcentration) for s in model.stages for b in s.blocks[1::2])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_fused_lcm_border_is_exact():
    """The BN shift is not a plain bias once conv2 zero-pads: check the fused LCM near borders, in float64."""
    torch.manual_seed(0)
    lcm = _filled(LocalConcentration(8)).double().eval()
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)  # maps smaller than 2x the kernel: every row touches a border
    with torch.no_grad():
        ref = lcm(x)
        got = lcm.fuse()(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
