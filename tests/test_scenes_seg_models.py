"""The small QT-ViT-Seg models of the seg-scenes recipe (Fashion-MNIST scenes, 11 classes): they build, run a
forward at 64 x 64, and carry the scenes' input size and classes."""
import pytest
import torch

import qtvit
from qtvit.train.recipes import RECIPES


@pytest.mark.parametrize("name, params", [("qtvit_seg_nano_scenes", 0.44), ("qtvit_seg_micro_scenes", 2.84)])
def test_scenes_model_builds_and_runs_at_64(name, params):
    torch.manual_seed(0)
    model = qtvit.create_model(name).eval()
    assert model.num_classes == 11 and model.pretrained_cfg["input_size"] == (3, 256, 256)
    assert model.pretrained_cfg["url"] is None and model.kernel_name == "qt"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 11, 8, 8) and torch.isfinite(out).all()  # the head's stride is 8


def test_seg_scenes_recipe_uses_a_registered_model():
    assert RECIPES["seg-scenes"]["model"] in qtvit.list_models()
