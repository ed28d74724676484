"""Every official segmentation model against its official code: an official-format checkpoint loaded through
the public loader (``create_model(name, checkpoint_path=...)`` for the shared fixtures, ``load_checkpoint`` for the
others) gives the official float64 logits (relative error < 1e-9).

The references are ``tests/data/segmentation/seg_*.json`` (mit-han-lab's EfficientViT-Seg B0-L2 and AMD's QT-ViT-Seg
1-5, Cityscapes and ADE20K; made by ``make_fixtures.py`` there) and the team's shared B1-ADE20K fixtures at 128 px.
``efficientvit_seg_b0_ade20k`` has no official counterpart (mit-han-lab defines B0 for Cityscapes only), so no
reference either; ``test_b0_ade20k_is_b0_cityscapes_without_the_final_expansion`` ties it to the checked code."""
import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qtvit
from qtvit.checkpoints import load_checkpoint

from conftest import SHARED_FIXTURES, rel_err
from oracle_weights import fill

DATA = Path(__file__).parent / "data" / "segmentation"
SHARED = ["seg_mit_b1_ade20k_r128x128.json", "seg_amd_b1_ade20k_r128x128.json"]
QTVIT = {"b1": 1, "b2": 2, "b3": 3, "l1": 4, "l2": 5}  # AMD's backbone names -> QT-ViT-i
OFFICIAL = {"mit": [("b0", "cityscapes")] + [(a, d) for a in QTVIT for d in ("cityscapes", "ade20k")]}
OFFICIAL["amd"] = OFFICIAL["mit"][1:]  # AMD's seg.py also defines a B0 head, but no QT-ViT exists on B0


def model_name(ref: dict) -> str:
    """The qtvit model of a fixture: mit -> efficientvit_seg_<arch>_<dataset>, amd -> qtvit_seg_<i>_<dataset>."""
    if ref["source"] == "mit":
        return f"efficientvit_seg_{ref['model']}_{ref['dataset']}"
    return f"qtvit_seg_{QTVIT[ref['model']]}_{ref['dataset']}"


_FILLED: dict = {}  # the last official_state_dict: the variants of one backbone share most of its tensors


def official_state_dict(keys) -> dict:
    """The official-format state_dict of ``keys`` filled with ``oracle_weights.fill`` (as the official models:
    float32 parameters, which fill rounds to, and int64 BN counters). Tensors of the previous call with the same
    name and shape are reused (fill depends on nothing else), so the fixtures, sorted by backbone, fill it once."""
    global _FILLED
    shapes = {k: torch.Size(s) for k, s in keys}
    reuse = {k: v for k, v in _FILLED.items() if shapes.get(k) == v.shape}
    todo = {k: torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else
            torch.empty(s, dtype=torch.float32, device="meta") for k, s in shapes.items() if k not in reuse}
    _FILLED = dict(reuse, **fill(todo))
    return {k: _FILLED[k] for k in shapes}


@pytest.fixture(scope="module", autouse=True)
def _free_filled():
    yield
    _FILLED.clear()


def _grouped_conv2d(conv2d):
    """``conv2d`` with float64 grouped convolutions as one unfold + batched matmul. PyTorch runs those one group
    at a time on CPU (53 710 calls in an L2 forward, 20 s); this gives the same sums, rounded differently."""

    def grouped(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if groups == 1 or x.dtype != torch.float64 or isinstance(padding, str) or x.dim() != 4:
            return conv2d(x, weight, bias, stride, padding, dilation, groups)
        (n, _, h, w), (out, _, kh, kw) = x.shape, weight.shape
        pair = torch.nn.modules.utils._pair
        (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw)).view(n, groups, -1, oh * ow)
        y = torch.matmul(weight.view(groups, out // groups, -1), cols).view(n, out, oh, ow)
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    return grouped


@contextlib.contextmanager
def fast_grouped_convs():
    """Within: float64 grouped convolutions through ``_grouped_conv2d``. Only the arithmetic primitive changes (the
    references come from the official code with PyTorch's own convolution), so a fault here can only fail a test."""
    conv2d = F.conv2d
    F.conv2d = _grouped_conv2d(conv2d)
    try:
        yield
    finally:
        F.conv2d = conv2d


def load_official(ref: dict) -> torch.nn.Module:
    """The fixture's model in float64, built without initialisation (``to_empty``; every tensor is then loaded),
    with the official-format checkpoint ``{"state_dict": ...}`` (float32) loaded by ``load_checkpoint``."""
    with torch.device("meta"):
        model = qtvit.create_model(model_name(ref))
    model = model.double().to_empty(device="cpu")
    report = load_checkpoint(model, {"state_dict": official_state_dict(ref["keys"])})
    assert report.ok and report.new == [] and report.state_key == "state_dict" and report.loaded == len(ref["keys"])
    return model


def load_official_file(ref: dict, folder: Path) -> torch.nn.Module:
    """The same through a saved file and ``create_model(name, checkpoint_path=...)``."""
    sd = official_state_dict(ref["keys"])
    torch.save({"state_dict": sd}, folder / "official.pt")
    model = qtvit.create_model(model_name(ref), checkpoint_path=folder / "official.pt")
    report = model.load_report
    assert report.ok and report.new == [] and report.state_key == "state_dict" and report.loaded == len(sd)
    return model


def parity_errors(model: torch.nn.Module, ref: dict) -> dict:
    """Run ``model`` in float64 eval mode on the fixture's input; the relative errors of the probes, per-class means
    and corner block against the official code's."""
    model = model.double().eval()
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    x = torch.randn(*ref["input"], generator=torch.Generator().manual_seed(ref["input_seed"]), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    assert list(out.shape) == ref["output_shape"] and model.stride == 8
    w = torch.randn((8,) + tuple(ref["output_shape"][1:]), generator=torch.Generator().manual_seed(ref["probe_seed"]),
                    dtype=torch.float64)
    corner = torch.tensor(ref["corner"], dtype=torch.float64)  # 4 x 4 in the shared files, 2 x 2 in ours
    h, w_ = corner.shape[-2:]
    return {
        "probes": rel_err(torch.einsum("bchw,pchw->bp", out, w), torch.tensor(ref["probes"], dtype=torch.float64)),
        "pooled": rel_err(out.mean(dim=(2, 3)), torch.tensor(ref["pooled"], dtype=torch.float64)),
        "corner": rel_err(out[..., :h, :w_], corner),
    }


def _fixtures():
    """Ours sorted by backbone (each one's variants in a row, see official_state_dict), then the shared ones."""
    ours = sorted(DATA.glob("seg_*.json"), key=lambda p: (p.stem.split("_")[2], p.stem))
    return [pytest.param(p, id=p.stem) for p in ours] + [
        pytest.param(SHARED_FIXTURES / f, id=f"shared-{Path(f).stem}") for f in SHARED]


def test_every_official_variant_has_a_fixture():
    refs = [json.loads(p.read_text()) for p in DATA.glob("seg_*.json")]
    assert sorted((r["source"], r["model"], r["dataset"]) for r in refs) == sorted(
        (s, a, d) for s, variants in OFFICIAL.items() for a, d in variants)
    names = {model_name(r) for r in refs}  # the registered qtvit_seg_{nano,micro}_scenes are small, ours only
    assert names | {"efficientvit_seg_b0_ade20k"} == set(qtvit.list_models("efficientvit_seg_*")) | set(
        qtvit.list_models("qtvit_seg_[0-9]_*"))


@pytest.mark.parametrize("path", _fixtures())
def test_parity_with_official_segmentation_code(path, tmp_path):
    if not path.is_file():
        pytest.skip(f"{path} not available")
    ref = json.loads(path.read_text())
    assert len(ref["keys"]) == ref.get("num_keys", len(ref["keys"]))
    shared = path.parent == SHARED_FIXTURES
    with fast_grouped_convs():
        errors = parity_errors(load_official_file(ref, tmp_path) if shared else load_official(ref), ref)
    assert max(errors.values()) < 1e-9, errors


def test_b0_ade20k_is_b0_cityscapes_without_the_final_expansion():
    """Ours, with no official counterpart: B0's backbone and head blocks (checked against the official B0 Cityscapes
    model above), no final expansion and 150 classes, as every official ADE20K B head."""
    ade, city = (qtvit.create_model(f"efficientvit_seg_b0_{d}") for d in ("ade20k", "cityscapes"))
    assert isinstance(ade.head.expand, torch.nn.Identity) and ade.num_classes == 150
    assert ade.head.classifier.in_channels == city.head.blocks[0].conv_pw.conv.out_channels == 32
    shared = {k: v.shape for k, v in city.state_dict().items() if not k.startswith(("head.expand", "head.classifier"))}
    assert shared == {k: v.shape for k, v in ade.state_dict().items() if not k.startswith("head.classifier")}


@pytest.mark.parametrize("groups, stride, padding, dilation, bias", [(12, 1, 1, 1, False), (4, 2, 2, 1, True),
                                                                    (3, (2, 1), (0, 2), (1, 2), True)])
def test_fast_grouped_convs_equal_torch(groups, stride, padding, dilation, bias):
    conv = torch.nn.Conv2d(12, 24, (3, 5), stride, padding, dilation, groups, bias).double()
    x = torch.randn(2, 12, 11, 8, dtype=torch.float64)
    original = F.conv2d
    with torch.no_grad():
        ref = conv(x)
        with fast_grouped_convs():
            assert F.conv2d is not original  # nn.Conv2d calls F.conv2d: the modules go through it
            fast = conv(x)
    assert F.conv2d is original and fast.shape == ref.shape and rel_err(fast, ref) < 1e-13
