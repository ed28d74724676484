"""The training speed-ups of issue 12: fused AdamW (option, same losses as the loop), the dense v-shortcut BN of
QT-ViT's attention in training (same output, gradients and running statistics as the official strided view), and
the main job's recipe (two processes of one thread, global batch 128)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("tiny_models")


def test_fused_optimizer_option_parses_and_reaches_the_optimizer(tmp_path):
    from qtvit.cli import build_parser, config_from_args
    from qtvit.train.setup import setup_run
    from qtvit.train.distributed import setup_distributed
    assert config_from_args(build_parser().parse_args(["train", "--fused-optimizer"])).fused_optimizer is True
    assert config_from_args(build_parser().parse_args(["train"])).fused_optimizer is False
    run = setup_run(tiny_config(tmp_path, fused_optimizer=True), setup_distributed("cpu"))
    assert run.optimizer.defaults["fused"] is True
    plain = setup_run(tiny_config(tmp_path), setup_distributed("cpu"))
    assert not plain.optimizer.defaults["fused"]


def test_fused_optimizer_trains_like_the_loop(tmp_path):
    from qtvit.train import train
    a = train(tiny_config(tmp_path, name="loop", epochs=2))
    b = train(tiny_config(tmp_path, name="fused", epochs=2, fused_optimizer=True))
    la, lb = [v for _, v in a["step_losses"]], [v for _, v in b["step_losses"]]
    assert len(la) == len(lb) == 20
    assert la[0] == lb[0]  # the same first batch and weights: rounding enters with the first update
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-3, atol=1e-3)
    for (k, p), (_, q) in zip(a["model"].state_dict().items(), b["model"].state_dict().items()):
        torch.testing.assert_close(q.float(), p.float(), rtol=1e-3, atol=1e-4, msg=k)


def _official_v_shortcut(attn, v):
    """The official formulation: BN over the d channels of the (B*E, d, N, 1) view of token-major v, then GELU."""
    B, E, N, d = v.shape
    y = attn.v_norm(v.transpose(-1, -2).reshape(B * E, d, N, 1))
    return attn.v_act(y).reshape(B, E, d, N).transpose(-1, -2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_v_shortcut_in_training_matches_the_official_view(channels_last):
    import copy
    from qtvit.attention import kernel_factory
    from qtvit.layers.lite_mla import LiteMLA
    torch.manual_seed(0)
    attn = LiteMLA(32, head_dim=16, kernel_layer=kernel_factory("qt"), pos_embed_size=(4, 4), v_shortcut=True)
    ref = copy.deepcopy(attn)
    qkv = torch.randn(3, 2, 16, 48)  # (B, E, N, 3d): v is a strided slice of it, as in forward
    outs, grads = [], []
    for m, fn in ((attn, attn.v_shortcut), (ref, lambda v: _official_v_shortcut(ref, v))):
        m.train()
        x = qkv.clone().requires_grad_()
        v = x[..., 32:]
        out = fn(v.contiguous(memory_format=torch.contiguous_format) if channels_last else v)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outs.append(out.detach())
        grads.append(x.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attn.v_norm.running_mean, ref.v_norm.running_mean)
    torch.testing.assert_close(attn.v_norm.running_var, ref.v_norm.running_var)
    assert outs[0].shape == (3, 2, 16, 16) and float(outs[0].abs().sum()) > 0


def test_fashion_mnist_recipe_uses_the_speed_ups():
    from qtvit.train import make_config
    cfg = make_config("fashion-mnist")
    assert cfg.fused_optimizer and cfg.channels_last
    assert make_config(None).fused_optimizer is False  # the defaults (and the other recipes) stay as they were
