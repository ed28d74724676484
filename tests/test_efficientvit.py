"""EfficientViT B0-B3 / L1-L3, QT-ViT-1...6 and the small variants: shapes, API, parity with the official code."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qtvit
from qtvit.attention import kernel_factory, list_kernels
from qtvit.layers import ChannelAffine, ConvNormAct, DropPath, LiteMLA
from qtvit.models.efficientvit import EfficientViT, checkpoint_filter_fn
from qtvit.models.inference import inference_form

DATA = Path(__file__).parent / "data" / "efficientvit"
from conftest import SHARED_FIXTURES as SHARED, rel_err  # noqa: E402
from oracle_weights import fill, probe_input  # noqa: E402  (a copy of the team's fixtures/oracle_weights.py)

OFFICIAL = [f"efficientvit_{v}" for v in ("b0", "b1", "b2", "b3", "l1", "l2", "l3")]
OFFICIAL += [f"qtvit_{i}" for i in range(1, 7)]
SMALL = ["efficientvit_nano", "qtvit_nano", "qtvit_micro"]
BIG = {"efficientvit_l2", "efficientvit_l3", "qtvit_5", "qtvit_6"}  # same code as L1 / QT-ViT-4, only slower
# Parameter counts of the official instantiations (SPEC G.10; re-counted on the official code, 1000 classes).
PARAMS = {
    "efficientvit_b0": 3_410_008, "efficientvit_b1": 9_102_024, "efficientvit_b2": 24_330_712,
    "efficientvit_b3": 48_646_056, "efficientvit_l1": 52_654_088, "efficientvit_l2": 63_707_016,
    "efficientvit_l3": 246_037_288, "qtvit_1": 9_353_135, "qtvit_2": 24_858_210, "qtvit_3": 49_700_727,
    "qtvit_4": 52_955_534, "qtvit_5": 64_108_944, "qtvit_6": 246_840_624,
}


def _fast(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


def _official_state_dict(keys):
    # Like the official models: float32 parameters (fill rounds to them), int64 BN counters.
    return fill({k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
                 for k, s in keys})


def _load_official(name, keys, **kwargs):
    model = qtvit.create_model(name, **kwargs)
    model.load_state_dict(EfficientViT.checkpoint_filter_fn(_official_state_dict(keys), model), strict=True)
    return model


def _input(res, batch=2):
    if isinstance(res, int):
        return probe_input(res, batch)
    return torch.randn(batch, 3, *res, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)


def _fixtures():
    files = sorted(DATA.glob("*.json"))
    return [pytest.param(f, marks=pytest.mark.slow) if f.name.split("_r")[0] in BIG else f for f in files]


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name, fixture", [("efficientvit_b1", "efficientvit_b1.json"),
                                           ("qtvit_1", "qtvit_1_r224.json")])
def test_parity_shared_fixtures_224(name, fixture):
    path = SHARED / fixture
    if not path.is_file():
        pytest.skip(f"{path} not available")
    ref = json.loads(path.read_text())
    model = _load_official(name, ref["keys"]).double().eval()
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    with torch.no_grad():
        logits = model(_input(ref["resolution"]))
    assert rel_err(logits, torch.tensor(ref["logits"], dtype=torch.float64)) < 1e-9


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.stem)
def test_parity_with_official_code(path):
    """Logits of every variant equal its official code's (float64, non-224 sizes exercise the pos-embed resize)."""
    ref = json.loads(path.read_text())
    name = path.name.split("_r")[0]
    assert len(ref["keys"]) == ref["num_keys"]
    model = _load_official(name, ref["keys"]).double().eval()
    assert sum(p.numel() for p in model.parameters()) == ref["params"] == PARAMS[name]
    res = tuple(ref["resolution"]) if isinstance(ref["resolution"], list) else ref["resolution"]
    with torch.no_grad():
        logits = model(_input(res))
    assert logits.shape == (2, 1000)
    assert rel_err(logits, torch.tensor(ref["logits"], dtype=torch.float64)) < 1e-9


@pytest.mark.parametrize("name", OFFICIAL)
def test_param_counts(name):
    with torch.device("meta"):
        model = qtvit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_efficientvit_checkpoint_into_qtvit_reports_only_the_qt_parameters():
    ref = json.loads((DATA / "efficientvit_b1_r96.json").read_text())
    model = qtvit.create_model("qtvit_1")
    result = model.load_state_dict(checkpoint_filter_fn(_official_state_dict(ref["keys"]), model), strict=False)
    assert result.unexpected_keys == []
    missing = {k.split(".attn.", 1)[1] for k in result.missing_keys}
    # (torch's BatchNorm does not report a missing num_batches_tracked)
    assert missing == {"pos_embed", "kernel.scale", "v_norm.weight", "v_norm.bias", "v_norm.running_mean",
                       "v_norm.running_var"}
    assert len(result.missing_keys) == 6 * 7  # 3 + 4 attention blocks in B1


def test_filter_fn_is_identity_on_qtvit_names_and_maps_by_name():
    model = qtvit.create_model("efficientvit_nano", num_classes=10)
    sd = model.state_dict()
    assert checkpoint_filter_fn(sd, model) is sd
    ddp = {"module." + k: v for k, v in sd.items()}
    assert list(checkpoint_filter_fn(ddp, model)) == list(sd)
    official = {
        "backbone.input_stem.op_list.0.conv.weight": 0, "backbone.input_stem.op_list.1.main.depth_conv.norm.bias": 1,
        "backbone.stages.0.op_list.0.main.inverted_conv.conv.weight": 2,
        "backbone.stages.2.op_list.2.context_module.main.aggreg.0.1.weight": 3,
        "backbone.stages.2.op_list.1.context_module.main.ones_scale1": 4,
        "backbone.stages.3.op_list.1.local_module.main.point_conv.norm.running_var": 5,
        "head.op_list.2.norm.weight": 6, "head.op_list.3.linear.bias": 7,
    }
    assert list(checkpoint_filter_fn(official)) == [
        "stem.conv.weight", "stages.0.blocks.0.conv_dw.norm.bias", "stages.1.downsample.conv_expand.conv.weight",
        "stages.3.blocks.1.attn.aggreg.0.conv_pw.weight", "stages.3.blocks.0.attn.kernel.scale",
        "stages.4.blocks.0.ffn.conv_pw.norm.running_var", "head.norm.weight", "head.fc.bias",
    ]
    large = {"backbone.stages.0.op_list.0.conv.weight": 0, "backbone.stages.0.op_list.1.main.conv2.norm.bias": 1,
             "backbone.stages.1.op_list.0.main.spatial_conv.conv.weight": 2,
             "backbone.stages.4.op_list.3.context_module.main.positional_encoding": 3}
    assert list(checkpoint_filter_fn(large)) == [
        "stem.conv.weight", "stages.0.blocks.0.conv2.norm.bias", "stages.1.downsample.conv_expand.conv.weight",
        "stages.4.blocks.2.attn.pos_embed",
    ]


# ------------------------------------------------------------------------------------------------ shapes and API


@pytest.mark.parametrize("name", _fast(OFFICIAL + SMALL))
def test_forward_backward(name):
    torch.manual_seed(0)
    small = name in SMALL
    model = qtvit.create_model(name, num_classes=7, in_chans=1 if small else 3, drop_path_rate=0.1).train()
    x = torch.randn(2, 1 if small else 3, 28 if small else 64, 28 if small else 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv.weight.grad.abs().sum() > 0
    last = model.stages[-1].blocks[-1]
    assert last.ffn.drop_path.drop_prob == pytest.approx(0.1)  # linear drop-path schedule ends at the rate
    assert model.pretrained_cfg["architecture"] == name and model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["first_conv"] == "stem.conv" and model.pretrained_cfg["classifier"] == "head.fc"


@pytest.mark.parametrize("name", ["efficientvit_b1", "qtvit_1", "qtvit_4"])
@pytest.mark.parametrize("hw", [(64, 96), (70, 50)])
def test_any_input_size(name, hw):
    """Same padding: each stride-2 stage maps n -> ceil(n/2); non-square maps work for QT-ViT too."""
    model = qtvit.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        final, feats = model.forward_intermediates(torch.randn(1, 3, *hw))
        logits = model.forward_head(final)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    expected = [(math.ceil(hw[0] / 2 ** (i + 1)), math.ceil(hw[1] / 2 ** (i + 1))) for i in range(5)]
    assert [tuple(f.shape[-2:]) for f in feats] == expected == model.stage_sizes(hw)


def test_qt_shortcut_per_token_equals_official_square_reshape():
    """The shortcut acts per token: on a square map it equals the official (b e) c w h BatchNorm2d + GELU."""
    torch.manual_seed(0)
    attn = LiteMLA(32, head_dim=16, kernel_layer=kernel_factory("qt"), pos_embed_size=(4, 4), v_shortcut=True).eval()
    attn.v_norm.running_mean.normal_()
    attn.v_norm.running_var.uniform_(0.5, 2)
    v = torch.randn(2, attn.num_heads, 16, 25)  # (B, E, d, N), a 5x5 map
    ours = attn.v_act(attn.v_norm(v.reshape(-1, 16, 25, 1))).reshape(v.shape)
    ref = attn.v_act(attn.v_norm(v.transpose(-1, -2).reshape(-1, 5, 5, 16).permute(0, 3, 1, 2)))
    torch.testing.assert_close(ours, ref.permute(0, 2, 3, 1).reshape(2, -1, 25, 16).transpose(-1, -2))


def test_forward_intermediates():
    model = qtvit.create_model("qtvit_1").eval()
    x = torch.randn(1, 3, 64, 64)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [16, 32, 64, 128, 256]
    assert [f["module"] for f in model.feature_info] == [f"stages.{i}" for i in range(5)]
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for f, info in zip(feats, model.feature_info):
            assert f.shape == (1, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape[1] for f in last2] == [128, 256]
        torch.testing.assert_close(last2[1], feats[4])
        early_final, early = model.forward_intermediates(x, indices=[0, -4], stop_early=True)
        assert [f.shape[1] for f in early] == [16, 32]
        torch.testing.assert_close(early_final, feats[1])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])


def test_reset_classifier_and_pre_logits():
    model = qtvit.create_model("efficientvit_b0").eval()
    assert model.num_features == 128 and model.head_hidden_size == 1280 and model.num_classes == 1000
    assert model.get_classifier().out_features == 1000
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(10)
        assert model(x).shape == (2, 10) and model.num_classes == 10
        assert model.get_classifier().in_features == 1280
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
    assert pre.shape == (2, 1280)


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = qtvit.create_model("qtvit_nano", num_classes=10, in_chans=1).train()
    x = torch.randn(4, 1, 28, 28)
    outs, grads = [], []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, hw", [("efficientvit_b1", (64, 64)), ("qtvit_1", (96, 64)), ("qtvit_4", (64, 64)),
                                      ("qtvit_nano", (28, 28))])
def test_inference_form_equals_eager(name, hw, monkeypatch):
    if name == "qtvit_nano":
        model = qtvit.create_model(name, num_classes=10, in_chans=1)
        for m in model.modules():  # non-trivial BN statistics and embeddings
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, LiteMLA):
                m.pos_embed.data.normal_(0, 0.5)
    else:  # official-format weights: realistic BN statistics, biases, embeddings
        fixture = {"efficientvit_b1": "efficientvit_b1_r96", "qtvit_1": "qtvit_1_r96", "qtvit_4": "qtvit_4_r64"}[name]
        model = _load_official(name, json.loads((DATA / f"{fixture}.json").read_text())["keys"])
    model.eval()
    x = torch.randn(2, model.in_chans, *hw, generator=torch.Generator().manual_seed(0))
    fused = inference_form(model, hw)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, ChannelAffine) for m in fused.modules()) == name.startswith("qtvit")
    assert all(isinstance(m.norm, nn.Identity) and m.conv.bias is not None
               for m in fused.modules() if isinstance(m, ConvNormAct))

    def no_interpolate(*args, **kwargs):
        raise AssertionError("the fused model must not resize positional embeddings")

    with torch.no_grad():
        eager = model(x)
        monkeypatch.setattr(F, "interpolate", no_interpolate)
        out = fused(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    if name.startswith("qtvit"):
        with pytest.raises(ValueError, match="fuse the model again"):
            fused(torch.randn(1, model.in_chans, hw[0] + 32, hw[1]))


@pytest.mark.parametrize("kernel", list_kernels())
def test_kernel_swap(kernel):
    torch.manual_seed(0)
    model = qtvit.create_model("qtvit_1", num_classes=10, kernel=kernel).eval()
    attns = [m for m in model.modules() if isinstance(m, LiteMLA)]
    assert len(attns) == 7 and all(m.kernel.name == kernel for m in attns)
    assert all(m.pos_embed is not None and m.v_norm is not None for m in attns)  # the rest of QT-ViT stays
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_kernel_options_and_errors():
    model = qtvit.create_model("efficientvit_b0", kernel="qt", kernel_options=dict(scale=2.0))
    scales = [m.kernel.scale.item() for m in model.modules() if isinstance(m, LiteMLA)]
    assert scales == [2.0] * 4
    assert all(m.pos_embed is None and m.v_norm is None for m in model.modules() if isinstance(m, LiteMLA))
    with pytest.raises(ValueError, match="unknown attention kernel"):
        qtvit.create_model("qtvit_1", kernel="rleu")
    with pytest.raises(ValueError, match="kernel_options must be a dict"):
        qtvit.create_model("qtvit_1", kernel_options=[1])
    with pytest.raises(ValueError, match="residual block needs stride 1"):
        from qtvit.layers import MBConv
        MBConv(8, 16, residual=True)


def test_small_variants_for_28px_grey_images():
    model = qtvit.create_model("qtvit_nano", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(3, 1, 28, 28), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(14, 14), (14, 14), (7, 7), (7, 7), (4, 4)]
    pe = [tuple(m.pos_embed.shape[-2:]) for m in model.modules() if isinstance(m, LiteMLA)]
    assert pe == [(7, 7), (4, 4)]  # stored for 28 px: no resize at the native size
    assert model.pretrained_cfg["input_size"] == (1, 28, 28) and model.pretrained_cfg["url"] is None
    assert sum(p.numel() for p in model.parameters()) == 482_892


def test_drop_path_is_training_only():
    dp = DropPath(0.5)
    x = torch.ones(64, 3)
    assert dp.eval()(x) is x
    y = dp.train()(x)
    assert set(y[:, 0].tolist()) <= {0.0, 2.0} and 0 < (y[:, 0] == 0).sum() < 64


def test_zero_init_last_starts_every_residual_branch_as_the_identity():
    torch.manual_seed(0)
    model = qtvit.create_model("qtvit_nano", zero_init_last=True).eval()
    # each residual block (conv blocks and the attention branch) must now return its input unchanged
    blocks = [b for s in model.stages for b in s.blocks]
    assert len(blocks) > 0
    for block in blocks:
        x = torch.randn(2, next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels, 8, 8)
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    zeroed = [n for n, p in model.named_parameters() if n.endswith("norm.weight") and not p.any()]
    assert len(zeroed) == sum(2 if hasattr(b, "ffn") else 1 for b in blocks)
    assert not any(not p.any() for n, p in qtvit.create_model("qtvit_nano").named_parameters()
                   if n.endswith("norm.weight"))  # off by default, as the official recipes train


def test_prune_intermediate_layers():
    model = qtvit.create_model("efficientvit_b0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert model.prune_intermediate_layers([1, 2]) == [1, 2]
        assert len(model.stages) == 3 and isinstance(model.head, nn.Identity)
        pruned = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qtvit_forward_backward_under_autocast(dtype):
    model = qtvit.create_model("qtvit_pico", num_classes=10, in_chans=1)
    x = torch.randn(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_untrained_qtvit_pico_on_an_all_zero_batch_has_finite_gradients():
    """Issue 9.3: zero tokens reach the qt kernel (black images, zero pos-embed at init); no NaN may come back."""
    torch.manual_seed(0)
    model = qtvit.create_model("qtvit_pico", num_classes=10, in_chans=1).train()
    model(torch.zeros(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []


def test_pos_embed_size_is_recorded_and_drives_the_cfg():
    nano = qtvit.create_model("qtvit_nano", num_classes=10)
    assert nano.pos_embed_size == 28 and nano.pretrained_cfg["input_size"] == (3, 28, 28)
    big = qtvit.create_model("qtvit_nano", num_classes=10, pos_embed_size=64, in_chans=1)
    assert big.pretrained_cfg["input_size"] == (1, 64, 64) and big.pretrained_cfg["pool_size"] == (8, 8)
    assert [tuple(m.pos_embed.shape[-2:]) for m in big.modules() if isinstance(m, LiteMLA)] == [(16, 16), (8, 8)]
    assert qtvit.create_model("efficientvit_b0").pretrained_cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="renamed pos_embed_size"):
        qtvit.create_model("qtvit_nano", img_size=32)


def test_constructor_called_directly_loads_pretrained_weights(tmp_path, monkeypatch):
    """pretrained=True works without create_model: the constructor loads through the builder."""
    from qtvit.models import _builder, efficientvit

    src = qtvit.create_model("qtvit_nano")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    torch.save({"state_dict": src.state_dict()}, tmp_path / "qtvit_nano.pt")
    asked = []

    def resolver(name, cfg, progress=True):
        asked.append(name)
        return str(tmp_path / "qtvit_nano.pt")

    monkeypatch.setattr(_builder, "pretrained_file", resolver)
    model = efficientvit.qtvit_nano(pretrained=True)
    assert asked == ["qtvit_nano"] and model.load_report.ok
    assert model.pretrained_cfg["architecture"] == "qtvit_nano"
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), name
    features = efficientvit.qtvit_nano(pretrained=True, features_only=True, out_indices=(3, 4))
    assert torch.equal(features.model.head.fc.weight, src.head.fc.weight)
    assert features.feature_info.channels() == [64, 128]


@pytest.mark.parametrize("affine", [True, False])
def test_one_batchnorm_fold_for_conv_and_affine(affine):
    from qtvit.layers.fold import ChannelAffine, bn_scale_shift, fuse_conv_bn

    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, groups=3).double()
    bn = nn.BatchNorm2d(6, affine=affine).double().eval()
    bn.running_mean.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(6, generator=g, dtype=torch.float64) + 0.5)
    if affine:
        bn.weight.data.normal_(generator=g)
        bn.bias.data.normal_(generator=g)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ChannelAffine.from_batchnorm(bn)(conv(x)), bn(conv(x)), rtol=1e-12, atol=1e-12)
    scale, shift = bn_scale_shift(bn)
    assert scale.shape == shift.shape == (6,)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        bn_scale_shift(nn.BatchNorm2d(6, track_running_stats=False))


def test_inference_forms_are_channels_last_on_the_cpu_only():
    from qtvit.layers.fold import inference_memory_format

    cpu = inference_memory_format(nn.Conv2d(4, 8, 3))
    assert cpu.weight.is_contiguous(memory_format=torch.channels_last) and not cpu.weight.is_contiguous()
    other = inference_memory_format(nn.Conv2d(4, 8, 3, device="meta"))  # any non-CPU device keeps its layout
    assert other.weight.is_contiguous()
