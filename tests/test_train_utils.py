"""A tiny registered model for the data/train/CLI tests (the zoo's models are too slow for many short runs),
plus tests of the schedule, EMA and parameter groups."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from qtvit.models import list_models, register_model

SMALL_FMNIST = str(Path(__file__).parent / "data" / "fashion_mnist_small")


class _DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.drop_prob = float(p)

    def forward(self, x):
        if not self.training or self.drop_prob == 0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, 1) >= self.drop_prob).to(x.dtype)
        return x * keep / (1 - self.drop_prob)


class TinyNet(nn.Module):
    """conv-norm-act stem, one residual block with drop path, pooled linear head: ~3k parameters."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, norm: type[nn.Module] = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, width: int = 16):
        super().__init__()
        self.pretrained_cfg = {"input_size": (in_chans, 16, 16), "crop_pct": 1.0, "interpolation": "bicubic",
                               "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1, bias=False), norm(width), nn.GELU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), norm(width), nn.GELU())
        self.drop_path = _DropPath(drop_path_rate)
        self.head = nn.Linear(width, num_classes)

    def reset_classifier(self, num_classes: int):
        self.head = nn.Linear(self.head.in_features, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.drop_path(self.block(x))
        return self.head(x.mean((2, 3)))


def _gn(c):
    return nn.GroupNorm(4, c)


def train_tiny(num_classes: int = 10, in_chans: int = 1, drop_path_rate: float = 0.0, pretrained: bool = False,
               **kw) -> nn.Module:
    return TinyNet(num_classes, in_chans, nn.BatchNorm2d, drop_path_rate, **kw)


def train_tiny_gn(num_classes: int = 10, in_chans: int = 1, drop_path_rate: float = 0.0, pretrained: bool = False,
                  **kw) -> nn.Module:
    return TinyNet(num_classes, in_chans, _gn, drop_path_rate, **kw)


def register_tiny_models(*extra) -> list[str]:
    """Register the tiny test models (idempotent); returns the names registered by this call."""
    names = []
    for fn in (train_tiny, train_tiny_gn, *extra):
        if fn.__name__ not in list_models():
            register_model(fn)
            names.append(fn.__name__)
    return names


@pytest.fixture(scope="module")
def tiny_models():
    """The tiny models, registered for a test module only: the zoo's own tests never see them."""
    from qtvit.models import _registry
    names = register_tiny_models()
    yield
    for n in names:
        _registry._model_entrypoints.pop(n, None)


pytestmark = pytest.mark.usefixtures("tiny_models")


def tiny_config(tmp_path, **kw):
    from qtvit.train import make_config
    base = dict(model="train_tiny", data=SMALL_FMNIST, output=str(tmp_path), name="run", epochs=2, batch_size=20,
                eval_batch_size=50, lr=3e-3, warmup_epochs=0.5, progress=False, device="cpu", threads=1)
    base.update(kw)
    return make_config(**base)


# ------------------------------------------------------------------------------------------------ schedule, EMA
def test_lr_schedule_warmup_then_cosine():
    from qtvit.train import lr_at
    assert lr_at(0, 100, 10, 1.0) == 0.0
    assert lr_at(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, 1.0, min_lr=0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)


def test_ema_decay_warmup_and_update():
    from qtvit.train import ModelEma, ema_decay_at
    assert ema_decay_at(4000, 0.9998, 4000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ema_decay_at(7, 0.9, 0) == 0.9
    m = nn.Linear(2, 1)
    ema = ModelEma(m, decay=0.5, warmup_steps=0)
    before = ema.module.weight.clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m, 1)
    torch.testing.assert_close(ema.module.weight, before + 1.0)  # halfway to the model
    assert not ema.module.weight.requires_grad


def test_param_groups_no_decay_on_norms_and_biases():
    from qtvit.train import param_groups
    model = TinyNet()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    nd = {id(p) for p in no_decay["params"]}
    assert id(model.stem[1].weight) in nd and id(model.stem[1].bias) in nd and id(model.head.bias) in nd
    assert id(model.stem[0].weight) not in nd and id(model.head.weight) not in nd
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_recipes_layer_defaults_preset_and_overrides():
    from qtvit.train import RECIPES, make_config
    qt = make_config("qtvit-b")
    assert (qt.model_ema_decay, qt.model_ema_warmup_steps, qt.weight_decay, qt.clip_grad, qt.bce) == \
        (0.9998, 4000, 0.1, 2.0, True)
    assert make_config("efficientvit-b").model_ema_warmup_steps == 2000
    fm = make_config("fashion-mnist", epochs=2)
    assert fm.epochs == 2 and fm.model == "qtvit_pico" and fm.recipe == "fashion-mnist"
    fm.model_kwargs["widths"] = None
    assert make_config("fashion-mnist").model_kwargs == {}  # presets are not shared
    assert "model_kwargs" not in RECIPES["fashion-mnist"]
    assert make_config("fashion-mnist", model="qtvit_micro").model_kwargs == {}
    with pytest.raises(ValueError, match="unknown recipe 'imagenet'"):
        make_config("imagenet")
    with pytest.raises(ValueError, match="unknown training options"):
        make_config(None, epochz=3)
