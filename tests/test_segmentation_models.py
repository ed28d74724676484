"""Segmentation models: EfficientViT-Seg, QT-ViT-Seg and UperNet; parity with the official code, official key
layouts, any input size, full-resolution prediction, kernel swap, inference form and ONNX export."""
import contextlib
import http.server
import json
import math
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qtvit
from qtvit.checkpoints import load_checkpoint
from qtvit.layers import FusedMBConv, LiteMLA
from qtvit.layers.seg_heads import FCNHead, UperHead, adaptive_avg_pool2d
from qtvit.models.inference import inference_form
from qtvit.models.seg_inference import _windows
from qtvit.models.segmentation import SegmentationModel, predict_full

from conftest import SHARED_FIXTURES as SHARED, rel_err
from oracle_weights import fill
from test_seg_parity import DATA as SEG_DATA, parity_errors

DATA = Path(__file__).parent / "data" / "efficientvit"
SEG_FIXTURES = [("efficientvit_seg_b1_ade20k", "seg_mit_b1_ade20k_r128x128.json"),
                ("qtvit_seg_1_ade20k", "seg_amd_b1_ade20k_r128x128.json")]
HF = "https://huggingface.co/han-cai/efficientvit-seg/resolve/main/"


def _fixture(name):
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text())


def _official_sd(keys, device=None):
    # as the official models: float32 parameters (fill rounds to them), int64 BN counters
    zeros = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32,
                            device=device) for k, s in keys}
    return zeros if device == "meta" else fill(zeros)


def _filled(model):
    """``model`` with the deterministic oracle weights under its own names (BN statistics included): O(1) outputs."""
    model.load_state_dict(fill(model.state_dict()))
    return model.eval()


# ------------------------------------------------------------------------------------------------ parity
# (the float64 parity of every variant with the official code is tests/test_seg_parity.py)


def test_efficientvit_seg_file_into_qtvit_seg_reports_the_qt_parameters_as_new():
    ref = _fixture("seg_mit_b1_ade20k_r128x128.json")
    model = qtvit.create_model("qtvit_seg_1_ade20k")
    report = load_checkpoint(model, {"state_dict": _official_sd(ref["keys"])})
    assert report.ok and report.loaded == len(ref["keys"])
    assert len(report.new) == 6 * 7 and all(".attn." in k for k in report.new)  # 3 + 4 attention blocks


def test_other_num_classes_drops_the_official_classifier(tmp_path):
    ref = _fixture("seg_mit_b1_ade20k_r128x128.json")
    torch.save({"state_dict": _official_sd(ref["keys"])}, tmp_path / "b1.pt")
    model = qtvit.create_model("efficientvit_seg_b1_ade20k", checkpoint_path=tmp_path / "b1.pt", num_classes=19)
    assert model.load_report.dropped == ["head.classifier.weight", "head.classifier.bias"]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 8, 8)


# ------------------------------------------------------------------------------------------------ official layouts


def _official_head_keys(in_chs, width, depth, expand, fused, final, classes):
    """The official SegHead's state_dict names and shapes (SPEC D.10, the fixtures' ``keys``); in_chs deepest first."""
    keys = []

    def conv(prefix, cin, cout, k=1, groups=1, bias=False, norm=True):
        keys.append((f"{prefix}.conv.weight", [cout, cin // groups, k, k]))
        if bias:
            keys.append((f"{prefix}.conv.bias", [cout]))
        if norm:
            keys.extend((f"{prefix}.norm.{n}", [cout]) for n in ("weight", "bias", "running_mean", "running_var"))
            keys.append((f"{prefix}.norm.num_batches_tracked", []))

    for j, c in enumerate(in_chs):  # the upsampled inputs are OpSequential([ConvLayer, UpSampleLayer])
        conv(f"head.input_ops.{j}" + (".op_list.0" if j < len(in_chs) - 1 else ""), c, width)
    mid = round(width * expand)
    for i in range(depth):
        p = f"head.middle.op_list.{i}.main"
        if fused:
            conv(f"{p}.spatial_conv", width, mid, 3)
        else:
            conv(f"{p}.inverted_conv", width, mid)
            conv(f"{p}.depth_conv", mid, mid, 3, groups=mid)
        conv(f"{p}.point_conv", mid, width)
    if final:
        conv("head.output_ops.0.op_list.0", width, width * final)
    conv(f"head.output_ops.0.op_list.{1 if final else 0}", width * (final or 1), classes, bias=True, norm=False)
    return keys


# backbone data file, official head (in_chs deepest first, width, depth, expand, fused, final expand), and the
# official parameter count in millions (SPEC D.10; None: not given there)
B_CHS = {"b0": (128, 64, 32), "b1": (256, 128, 64), "b2": (384, 192, 96), "b3": (512, 256, 128)}
VARIANTS = {
    "efficientvit_seg_b0_cityscapes": ("efficientvit_b0_r96", (B_CHS["b0"], 32, 1, 4, False, 4, 19), 0.71),
    "efficientvit_seg_b0_ade20k": ("efficientvit_b0_r96", (B_CHS["b0"], 32, 1, 4, False, None, 150), None),
    "efficientvit_seg_b1_cityscapes": ("efficientvit_b1_r96", (B_CHS["b1"], 64, 3, 4, False, 4, 19), 4.80),
    "efficientvit_seg_b1_ade20k": ("efficientvit_b1_r96", (B_CHS["b1"], 64, 3, 4, False, None, 150), 4.79),
    "efficientvit_seg_b2_cityscapes": ("efficientvit_b2_r96", (B_CHS["b2"], 96, 3, 4, False, 4, 19), 15.32),
    "efficientvit_seg_b2_ade20k": ("efficientvit_b2_r96", (B_CHS["b2"], 96, 3, 4, False, None, 150), 15.29),
    "efficientvit_seg_b3_cityscapes": ("efficientvit_b3_r96", (B_CHS["b3"], 128, 3, 4, False, 4, 19), 39.60),
    "efficientvit_seg_b3_ade20k": ("efficientvit_b3_r96", (B_CHS["b3"], 128, 3, 4, False, None, 150), 39.55),
    "efficientvit_seg_l1_cityscapes": ("efficientvit_l1_r64", (B_CHS["b3"], 256, 3, 1, True, None, 19), 40.24),
    "efficientvit_seg_l1_ade20k": ("efficientvit_l1_r64", (B_CHS["b3"], 128, 3, 4, True, 8, 150), 40.41),
    "efficientvit_seg_l2_cityscapes": ("efficientvit_l2_r64", (B_CHS["b3"], 256, 5, 1, True, None, 19), 52.61),
    "efficientvit_seg_l2_ade20k": ("efficientvit_l2_r64", (B_CHS["b3"], 128, 3, 4, True, 8, 150), 51.46),
}
for _i, (_arch, _data) in enumerate([("b1", "qtvit_1_r96"), ("b2", "qtvit_2_r96"), ("b3", "qtvit_3_r96"),
                                     ("l1", "qtvit_4_r64"), ("l2", "qtvit_5_r64")], start=1):
    for _ds in ("cityscapes", "ade20k"):
        VARIANTS[f"qtvit_seg_{_i}_{_ds}"] = (_data, VARIANTS[f"efficientvit_seg_{_arch}_{_ds}"][1], None)


def test_filter_fn_keeps_qtvit_names_and_strips_ddp_prefixes():
    ref = _fixture("seg_mit_b1_ade20k_r128x128.json")
    with torch.device("meta"):
        model = qtvit.create_model("efficientvit_seg_b1_ade20k")
    ours = model.state_dict()
    assert SegmentationModel.checkpoint_filter_fn(ours, model) is ours
    official = _official_sd(ref["keys"], "meta")
    wrapped = {f"module.{k}": v for k, v in official.items()}
    assert list(SegmentationModel.checkpoint_filter_fn(wrapped, model)) == list(
        SegmentationModel.checkpoint_filter_fn(official, model))


def test_official_head_layout_matches_the_fixtures():
    """The head-key generator below reproduces the official keys of both fixtures, in order."""
    for _, fixture in SEG_FIXTURES:
        ref = _fixture(fixture)
        assert [(k, s) for k, s in ref["keys"] if k.startswith("head.")] == _official_head_keys(
            *VARIANTS["efficientvit_seg_b1_ade20k"][1])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_official_state_dict_layout_of_every_variant(name):
    """Every variant takes the official state_dict (the classifier's backbone keys + the SegHead keys): no missing
    or unexpected keys, the same shapes, and the official parameter count."""
    data, head, params = VARIANTS[name]
    backbone = [(k, s) for k, s in json.loads((DATA / f"{data}.json").read_text())["keys"] if k.startswith("backbone.")]
    keys = backbone + _official_head_keys(*head)
    with torch.device("meta"):
        model = qtvit.create_model(name)
    converted = SegmentationModel.checkpoint_filter_fn(_official_sd(keys, "meta"), model)
    state = model.state_dict()
    assert sorted(converted) == sorted(state)
    assert all(converted[k].shape == state[k].shape for k in state)
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(math.prod(s) for k, s in keys if not k.endswith(("running_mean", "running_var", "tracked")))
    if params is not None:
        assert round(n / 1e6, 2) == params


def test_upernet_parameter_counts_match_table_6():
    """QT-ViT paper Table 6 (UperNet, ADE20K), without the auxiliary head (used in training only): 32.5 / 43.7 / 68.8
    M for EfficientViT-B1 / B2 / B3, 32.8 / 44.3 / 69.7 M for QT-ViT-1 / 2 / 3. B3 counts 68.68 M here: the table's
    68.8 is 0.9 M below QT-ViT-3's 69.7, but the backbones differ by 1.05 M (Table 1: 48.65 vs 49.70 M)."""
    expected = {"efficientvit_b1": 32.5, "efficientvit_b2": 43.7, "efficientvit_b3": 68.8, "qtvit_1": 32.8,
                "qtvit_2": 44.3, "qtvit_3": 69.7}
    for backbone, millions in expected.items():
        with torch.device("meta"):
            model = qtvit.create_model(f"upernet_{backbone}")
        n = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.aux_head.parameters())
        assert abs(n / 1e6 - millions) < (0.15 if backbone == "efficientvit_b3" else 0.05), backbone


# ------------------------------------------------------------------------------------------------ pretrained=True


@contextlib.contextmanager
def _serve(folder):
    """A loopback HTTP server for the files in ``folder``; yields its URL and the list of requested paths."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):  # called once per request
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_pretrained_downloads_the_official_file(tmp_path, monkeypatch):
    ref = _fixture("seg_mit_b1_ade20k_r128x128.json")
    sd = _official_sd(ref["keys"])
    (tmp_path / "hf").mkdir()
    torch.save({"state_dict": sd}, tmp_path / "hf" / "efficientvit_seg_b1_ade20k.pt")
    name = "efficientvit_seg_b1_ade20k"
    assert qtvit.create_model(name).pretrained_cfg["url"] == HF + "efficientvit_seg_b1_ade20k.pt"
    with _serve(tmp_path / "hf") as (url, requests):
        monkeypatch.setenv("QTVIT_PRETRAINED_URL_BASE", url)
        monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
        model = qtvit.create_model(name, pretrained=True)
    assert requests == ["/efficientvit_seg_b1_ade20k.pt"]
    assert model.load_report.ok and model.load_report.loaded == len(sd)
    assert torch.equal(model.head.classifier.weight, sd["head.output_ops.0.op_list.0.conv.weight"])
    assert (tmp_path / "cache" / "efficientvit_seg_b1_ade20k.pt").is_file()


def test_pretrained_gives_the_official_outputs(tmp_path, monkeypatch):
    """pretrained=True end to end on a model with the final expansion: the downloaded official-format file gives the
    official code's float64 logits (the in-repo fixture of mit-han-lab's B0 Cityscapes)."""
    name = "efficientvit_seg_b0_cityscapes"
    ref = json.loads((SEG_DATA / "seg_mit_b0_cityscapes_r96x64.json").read_text())
    (tmp_path / "hf").mkdir()
    torch.save({"state_dict": _official_sd(ref["keys"])}, tmp_path / "hf" / f"{name}.pt")
    with _serve(tmp_path / "hf") as (url, requests):
        monkeypatch.setenv("QTVIT_PRETRAINED_URL_BASE", url)
        monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
        model = qtvit.create_model(name, pretrained=True)
    assert requests == [f"/{name}.pt"] and model.load_report.ok and model.load_report.loaded == len(ref["keys"])
    errors = parity_errors(model, ref)
    assert max(errors.values()) < 1e-9, errors


def test_pretrained_backbone_starts_from_the_imagenet_weights(tmp_path, monkeypatch):
    ref = _fixture("efficientvit_b1.json")
    sd = _official_sd(ref["keys"])
    (tmp_path / "hf").mkdir()
    torch.save({"state_dict": sd}, tmp_path / "hf" / "efficientvit_b1_r224.pt")
    with _serve(tmp_path / "hf") as (url, requests):
        monkeypatch.setenv("QTVIT_PRETRAINED_URL_BASE", url)
        monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
        model = qtvit.create_model("efficientvit_seg_b1_cityscapes", pretrained_backbone=True)
    assert requests == ["/efficientvit_b1_r224.pt"] and model.backbone.load_report.ok
    assert torch.equal(model.backbone.stem.conv.weight, sd["backbone.input_stem.op_list.0.conv.weight"])
    assert isinstance(model.backbone.head, nn.Identity)  # the classifier went after loading


def test_every_mit_model_has_its_official_url_and_the_others_none():
    for name in qtvit.list_models("efficientvit_seg_*"):
        with torch.device("meta"):
            url = qtvit.create_model(name).pretrained_cfg["url"]
        assert url == (None if name == "efficientvit_seg_b0_ade20k" else f"{HF}{name}.pt")
    with torch.device("meta"):
        assert qtvit.create_model("qtvit_seg_1_ade20k").pretrained_cfg["url"] is None
    with pytest.raises(ValueError, match="no downloadable pretrained weights"):
        qtvit.create_model("upernet_efficientvit_b0", pretrained=True)


# ------------------------------------------------------------------------------------------------ sizes and heads


@pytest.mark.parametrize("name, stride", [("qtvit_seg_1_cityscapes", 8), ("efficientvit_seg_l1_cityscapes", 8),
                                          ("upernet_qtvit_1", 4), ("upernet_l2vit_tiny", 4)])
def test_any_input_size_end_to_end(name, stride):
    torch.manual_seed(0)
    model = qtvit.create_model(name).eval()
    assert model.stride == stride
    x = torch.randn(2, 3, 70, 98)
    with torch.no_grad():
        out = model(x)
        full = predict_full(model, x)
    classes = model.num_classes
    assert out.shape == (2, classes, math.ceil(70 / stride), math.ceil(98 / stride))
    assert full.shape == (2, classes, 70, 98) and torch.isfinite(full).all()


def test_cityscapes_full_resolution():
    """1024 x 2048: 8192 tokens at stride 16, so the attention core runs in chunks."""
    model = qtvit.create_model("efficientvit_seg_b0_cityscapes").eval()
    assert model.pretrained_cfg["input_size"] == (3, 1024, 2048)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1024, 2048))
    assert out.shape == (1, 19, 128, 256) and torch.isfinite(out).all()


def test_training_mode_forward_and_auxiliary_logits():
    # UperNet's code at a tenth of its width (the registered upernet_* differ only in widths)
    model = SegmentationModel("efficientvit_b0", head_layer=UperHead, head_args=dict(channels=48), in_indices=4,
                              aux_layer=FCNHead, aux_args=dict(channels=24), num_classes=7).train()
    x = torch.randn(2, 3, 64, 96)
    assert model(x).shape == (2, 7, 16, 24)  # forward returns the logits alone in training mode too
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 7, 16, 24) and aux.shape == (2, 7, 4, 6)
    (F.cross_entropy(logits, torch.zeros(2, 16, 24, dtype=torch.long))
     + 0.4 * F.cross_entropy(aux, torch.zeros(2, 4, 6, dtype=torch.long))).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # no unused parameters (DDP)
    assert qtvit.create_model("efficientvit_seg_b0_cityscapes").forward_with_aux(x)[1] is None


def test_registered_models_take_an_auxiliary_head_and_zero_init_last():
    model = qtvit.create_model("qtvit_seg_1_ade20k", num_classes=5, aux_channels=16, zero_init_last=True).train()
    x = torch.randn(2, 3, 64, 96)
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 5, 8, 12) and aux.shape == (2, 5, 4, 6)  # the aux head reads the stride-16 map
    assert model.aux_head.convs[0].conv.out_channels == 16
    residual_heads = [b for b in model.head.modules() if getattr(b, "residual", False)]
    assert residual_heads and all(not b.convs()[-1].norm.weight.any() for b in residual_heads)
    plain = qtvit.create_model("qtvit_seg_1_ade20k", num_classes=5)
    assert plain.aux_head is None and all(p.any() for n, p in plain.named_parameters() if n.endswith("norm.weight"))


def test_upernet_on_any_backbone_and_heads_directly():
    model = SegmentationModel("efficientvit_nano", head_layer=UperHead, head_args=dict(channels=32), in_indices=4,
                              aux_layer=FCNHead, aux_args=dict(channels=16), num_classes=3, in_chans=1)
    out, aux = model.forward_with_aux(torch.randn(2, 1, 30, 20))
    assert out.shape == (2, 3, 15, 10) and aux.shape == (2, 3, 8, 5)  # nano: reductions 2, 2, 4, 4, 8
    model.reset_classifier(4)
    out, aux = model.forward_with_aux(torch.randn(2, 1, 30, 20))
    assert out.shape[1] == aux.shape[1] == 4 and model.get_classifier().out_channels == 4
    with pytest.raises(ValueError, match="out of range"):
        SegmentationModel("efficientvit_b0", in_indices=(2, 9))


@pytest.mark.parametrize("h, w, bins", [(7, 5, 6), (12, 12, 3), (5, 9, 2), (1, 3, 6), (13, 6, 1)])
def test_matrix_adaptive_pooling_equals_torch(h, w, bins):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert rel_err(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins)) < 1e-13


def test_kernel_swap():
    model = qtvit.create_model("qtvit_seg_1_ade20k", kernel="softmax").eval()
    attns = [m for m in model.modules() if isinstance(m, LiteMLA)]
    assert len(attns) == 7 and all(m.kernel.name == "softmax" and m.pos_embed is not None for m in attns)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 48, 80))).all()


# ------------------------------------------------------------------------------------------------ full resolution


def test_predict_full_windows_flips_and_sizes():
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 5, 1).eval()  # a crop- and flip-equivariant "model" at stride 1
    x = torch.randn(2, 3, 40, 50)
    ref = pointwise(x)
    for kwargs in (dict(), dict(sliding_window=16), dict(sliding_window=(24, 17), overlap=0.5, flip=True)):
        torch.testing.assert_close(predict_full(pointwise, x, **kwargs), ref, rtol=1e-5, atol=1e-6)
    assert predict_full(pointwise, x, size=(80, 100)).shape == (2, 5, 80, 100)
    assert _windows(40, 16, 11) == [0, 11, 22, 24] and _windows(10, 16, 11) == [0]

    model = _filled(qtvit.create_model("efficientvit_seg_b0_cityscapes"))
    with torch.no_grad():
        plain = F.interpolate(model(x), size=(40, 50), mode="bilinear", align_corners=False)
        flipped = F.interpolate(model(x.flip(-1)), size=(40, 50), mode="bilinear", align_corners=False).flip(-1)
        torch.testing.assert_close(predict_full(model, x), plain)
        torch.testing.assert_close(predict_full(model, x, flip=True), (plain + flipped) / 2)
        whole = predict_full(model, x, sliding_window=64)  # one window holds the image
        torch.testing.assert_close(whole, plain)
        assert predict_full(model, x, sliding_window=32, mode="bicubic").shape == (2, 19, 40, 50)


# ------------------------------------------------------------------------------------------------ inference, export


# small stand-ins for the L-series head (FusedMBConv, final expansion, GELU) and UperNet on L2ViT: the same code
SMALL = {
    "seg_l_head_on_qtvit_nano": lambda: SegmentationModel(
        "qtvit_nano", head_args=dict(width=16, depth=2, block=FusedMBConv, final_expand=8, act_layer=nn.GELU),
        in_indices=(2, 3, 4), num_classes=5),
    "upernet_on_l2vit_nano": lambda: SegmentationModel(
        "l2vit_nano", head_layer=UperHead, head_args=dict(channels=32), in_indices=4, aux_layer=FCNHead, in_chans=3,
        num_classes=5),
}


@pytest.mark.parametrize("name", ["qtvit_seg_1_ade20k", "upernet_efficientvit_b0", *SMALL])
def test_inference_form_equals_eager(name):
    torch.manual_seed(0)
    model = _filled(SMALL[name]() if name in SMALL else qtvit.create_model(name))
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        ref = model(x)
        for size in (None, (70, 98)):
            fused = inference_form(model, size)
            assert rel_err(fused(x), ref) < 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.head.modules())


@pytest.mark.parametrize("name", ["qtvit_seg_1_ade20k", "upernet_efficientvit_b0"])
def test_onnx_export_free_height_and_width(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from qtvit.tools.export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = _filled(qtvit.create_model(name))
    path = export_onnx(model, tmp_path / f"{name}.onnx", (64, 64))
    rows = check_onnx(model, path, [(64, 64), (72, 104)], batch_size=1, atol=1e-4)
    assert [r["size"] for r in rows] == [(64, 64), (72, 104)]
    assert min(r["max_abs_output"] for r in rows) > 1e-2  # non-trivial outputs, so the check means something
