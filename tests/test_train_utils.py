"""The schedule, EMA, parameter groups and recipes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import TinyNet

pytestmark = pytest.mark.usefixtures("tiny_models")


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
    assert make_config("fashion-mnist").model_kwargs == {"strides": (2, 1, 2, 1, 2)}  # presets are not shared
    assert RECIPES["fashion-mnist"]["model_kwargs"] == {"strides": (2, 1, 2, 1, 2)}  # the preset itself unchanged
    assert make_config("fashion-mnist", model="qtvit_micro").model_kwargs == {}
    with pytest.raises(ValueError, match="unknown recipe 'imagenet'"):
        make_config("imagenet")
    with pytest.raises(ValueError, match="unknown training options"):
        make_config(None, epochz=3)


def test_peak_memory_is_measured_one_way():
    """The training row's peak and the benchmarks' peak of one call read the same high-water mark: a call that
    holds 64 MiB shows at least that much extra, and the process's peak covers it."""
    import numpy as np

    from qtvit._memory import peak_memory_mb, peak_memory_of
    cpu = torch.device("cpu")

    def hold():
        a = np.ones(64 * 2**20, np.uint8)  # touched, so resident
        return int(a[::4096].sum())
    extra = peak_memory_of(hold, cpu)
    if extra is None:
        pytest.skip("no /proc/self/clear_refs here: the peak of one call cannot be measured")
    assert 64 * 2**20 * 0.9 <= extra <= 64 * 2**20 * 2
    assert peak_memory_mb(cpu) >= 64
