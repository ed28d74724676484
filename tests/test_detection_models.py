"""The detectors: torchvision's Mask R-CNN and RetinaNet on the zoo's backbones through create_model, at odd input
sizes in eval and train mode, backbone options passed through, ImageNet weights for the backbone, and the rest of
the zoo importable without torchvision."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchvision")
import qtvit  # noqa: E402
from qtvit.models.detection import DETECTION_BACKBONES, BackboneFPN, build_detector  # noqa: E402

from conftest import REPO  # noqa: E402

SIZES = [(97, 130), (130, 97), (41, 33)]  # non-square, not multiples of 32, one smaller than the anchors
FAST = dict(min_size=96, max_size=160, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50,
            box_batch_size_per_image=32, box_detections_per_img=20)  # fewer RoIs: RoIAlign's backward is slow on CPU


def _small(kind: str, **kwargs):
    # qtvit_nano with B-series strides (4-32 at stages 1-4), as the scenes' segmentation models
    args = dict(FAST, **kwargs) if kind == "maskrcnn" else dict(min_size=96, max_size=160, detections_per_img=20,
                                                                 **kwargs)
    return build_detector(kind, "qtvit_nano", num_classes=5, backbone_args=dict(strides=(2,) * 5, pos_embed_size=128),
                          **args)


def _targets(sizes, masks: bool):
    out = []
    for k, (h, w) in enumerate(sizes):
        t = dict(boxes=torch.tensor([[2.0, 3.0, w - 5.0, h / 2], [w / 3, h / 3, w - 1.0, h - 1.0]]),
                 labels=torch.tensor([1 + k % 4, 4]))
        if masks:
            t["masks"] = torch.zeros(2, h, w, dtype=torch.uint8)
            t["masks"][0, 3:h // 2, 2:w - 5] = 1
            t["masks"][1, h // 3:h - 1, w // 3:w - 1] = 1
        out.append(t)
    out.append(dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64)))  # an image without objects
    if masks:
        out[-1]["masks"] = torch.zeros(0, *sizes[0], dtype=torch.uint8)
    return out


@pytest.mark.parametrize("kind", ["maskrcnn", "retinanet"])
def test_detectors_at_odd_sizes_in_eval_and_train_mode(kind):
    torch.manual_seed(0)
    model = _small(kind)
    images = [torch.rand(3, h, w) for h, w in SIZES]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    for o, (h, w) in zip(out, SIZES):
        n = len(o["boxes"])
        assert o["boxes"].shape == (n, 4) and o["labels"].shape == o["scores"].shape == (n,)
        assert n <= 20 and (o["boxes"][:, 0::2] <= w).all() and (o["boxes"][:, 1::2] <= h).all()
        assert ((o["labels"] >= 1) & (o["labels"] < 5)).all()
        if kind == "maskrcnn":
            assert o["masks"].shape == (n, 1, h, w)
    model.train()
    losses = model(images + [torch.rand(3, *SIZES[0])], _targets(SIZES, kind == "maskrcnn"))
    expected = ({"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
                if kind == "maskrcnn" else {"classification", "bbox_regression"})
    assert set(losses) == expected and all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    stem = model.backbone.body.stem.conv.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_registered_detectors_and_their_pyramids():
    names = [f"{k}_{b}" for k in ("maskrcnn", "retinanet") for b in DETECTION_BACKBONES]
    assert sorted(names) == qtvit.list_models("maskrcnn_*") + qtvit.list_models("retinanet_*")
    with torch.device("meta"):
        m = qtvit.create_model("maskrcnn_l2vit_tiny")
        r = qtvit.create_model("retinanet_efficientvit_b2", num_classes=11)
    assert m.backbone.strides == [4, 8, 16, 32] and m.backbone.out_channels == 256 and m.num_classes == 81
    assert r.backbone.strides == [8, 16, 32] and r.head.classification_head.num_classes == 11
    assert m.pretrained_cfg["architecture"] == "maskrcnn_l2vit_tiny" and m.backbone_name == "l2vit_tiny"
    assert not hasattr(m.backbone.body, "head") or isinstance(m.backbone.body.head, torch.nn.Identity)


def test_efficientvit_b1_mask_rcnn_trains_a_step_at_128_px():
    torch.manual_seed(0)
    model = qtvit.create_model("maskrcnn_efficientvit_b1", num_classes=5, min_size=128, max_size=128)
    model.train()
    sizes = [(97, 130)]
    losses = model([torch.rand(3, *sizes[0]), torch.rand(3, *sizes[0])], _targets(sizes, True))
    assert all(torch.isfinite(v) for v in losses.values()) and len(losses) == 5


def test_backbone_options_pass_through():
    with torch.device("meta"):
        qt = qtvit.create_model("maskrcnn_qtvit_1")
        no_ape = qtvit.create_model("maskrcnn_qtvit_1", pos_embed=False)
        soft = qtvit.create_model("retinanet_qtvit_1", kernel="softmax", drop_path_rate=0.1)
        ev = qtvit.create_model("maskrcnn_efficientvit_b1")
    ape = [n for n, _ in qt.named_parameters() if n.endswith("pos_embed")]
    assert ape and not [n for n, _ in no_ape.named_parameters() if n.endswith("pos_embed")]
    assert qt.kernel_name == "qt" and soft.kernel_name == "softmax" and ev.kernel_name == "relu"
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(qt) - count(no_ape) == sum(p.numel() for n, p in qt.named_parameters() if n.endswith("pos_embed"))


def test_head_widths_and_norms_are_options():
    """The neck and head options build torchvision's own modules at the asked widths, normalised when asked; the
    defaults are torchvision's Mask R-CNN (two 1024-d fc, four 3x3 convs of 256, no norm) under their usual names."""
    with torch.device("meta"):
        default = qtvit.create_model("maskrcnn_qtvit_1")
        small = qtvit.create_model("maskrcnn_qtvit_1", fpn_channels=128, box_head_dim=256, mask_head_channels=64,
                                   mask_head_layers=2, head_norm="gn")
    heads = default.roi_heads
    assert heads.box_head.fc7.out_features == 1024 and len(heads.mask_head) == 4
    assert heads.mask_head[0][0].out_channels == 256 and default.backbone.fpn.layer_blocks[0][0].bias is not None
    sh = small.roi_heads
    assert sh.box_head.fc6.in_features == 128 * 7 * 7 and sh.box_predictor.cls_score.in_features == 256
    assert len(sh.mask_head) == 2 and sh.mask_head[1][0].out_channels == 64
    assert sh.mask_predictor.mask_fcn_logits.out_channels == 81
    norms = [m for m in small.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 2 + 4 + 4  # the mask head's 2 convs, the FPN's 4 lateral and 4 output convs
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in default.modules())
    bn = _small("maskrcnn", head_norm="bn", mask_head_layers=1)
    bn.eval()
    with torch.no_grad():
        out = bn([torch.rand(3, 70, 90)])
    assert out[0]["masks"].shape[-2:] == (70, 90)
    with pytest.raises(ValueError, match="norm='layer'"):
        _small("maskrcnn", head_norm="layer")
    with pytest.raises(ValueError, match="box_head_dim=0"):
        _small("maskrcnn", box_head_dim=0)


def test_pretrained_backbone_loads_the_imagenet_weights(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = qtvit.create_model("efficientvit_b1")
    qtvit.save_pretrained(source, tmp_path / "b1")
    asked = []
    monkeypatch.setattr("qtvit.models._builder.pretrained_file",
                        lambda name, cfg, *a, **k: asked.append(name) or str(tmp_path / "b1"))
    model = qtvit.create_model("maskrcnn_efficientvit_b1", pretrained_backbone=True)
    assert asked == ["efficientvit_b1"] and model.backbone.body.load_report.ok
    assert torch.equal(model.backbone.body.stem.conv.weight, source.stem.conv.weight)
    loaded = model.backbone.body.stages.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.stages.state_dict().items())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no downloadable pretrained weights"):  # the detectors themselves have none
        qtvit.create_model("maskrcnn_qtvit_1", pretrained=True)
    with pytest.raises(ValueError, match="detector kind 'fasterrcnn'"):
        build_detector("fasterrcnn", "qtvit_nano")
    with pytest.raises(ValueError, match=r"anchor_sizes \(8, 16\): the FPN has 5 levels"):
        _small("maskrcnn", anchor_sizes=(8, 16))
    with pytest.raises(ValueError, match="extra='p7'"):
        BackboneFPN("qtvit_nano", extra="p7")


def test_the_zoo_imports_without_torchvision():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("no torchvision here")
sys.meta_path.insert(0, Block())
import qtvit, torch
m = qtvit.create_model("qtvit_pico", num_classes=10)
assert m(torch.rand(1, 3, 28, 28)).shape == (1, 10)
try:
    qtvit.create_model("maskrcnn_qtvit_1")
except ImportError as e:
    print("ERR", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR the detectors need torchvision: pip install 'qtvit[detect]'" in out.stdout


@pytest.mark.parametrize("name", ["retinanet_qtvit_1", "maskrcnn_efficientvit_b1"])
def test_save_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = qtvit.create_model(name, num_classes=7, min_size=128, max_size=160, pos_embed=False)
    qtvit.save_pretrained(model, tmp_path)
    again = qtvit.create_model(checkpoint_path=tmp_path)
    assert again.pretrained_cfg["architecture"] == name and again.load_report.ok and again.num_classes == 7
    assert again.transform.min_size == (128,) and again.transform.max_size == 160
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
