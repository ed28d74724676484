"""fp16 inputs of the kernels whose output is not a convex combination of v (issue 27, item 11): the fp32 island
keeps sums that overflow fp16 exact, and an output beyond fp16's range warns instead of saturating silently."""
from __future__ import annotations

import warnings

import pytest
import torch

from conftest import rel_err
from qtvit.attention import AttentionRangeWarning, create_kernel, list_kernels
from qtvit.attention import core

UNBOUNDED = [n for n in list_kernels() if create_kernel(n, head_dim=16, num_heads=2).normaliser != "divide"]


def _qkv(q_scale, kv_scale, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, n, 16, generator=g) * s for s in (q_scale, kv_scale, kv_scale)]


def test_the_unbounded_kernels_are_the_ones_named_in_the_issue():
    assert {"mean", "inline", "mala"} <= set(UNBOUNDED)


@pytest.mark.parametrize("name", ["mean", "inline", "mala"])
def test_sums_that_overflow_fp16_stay_exact_in_the_fp32_island(name, monkeypatch):
    monkeypatch.setattr(core, "_warned", set())
    kernel = create_kernel(name, head_dim=16, num_heads=2)
    q, k, v = _qkv(1, 40)
    assert float((k.transpose(-1, -2) @ v).abs().max()) > 65504  # Σ k v alone overflows fp16
    ref = kernel(q.double(), k.double(), v.double())
    assert float(ref.abs().max()) < 65504  # while the output fits
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionRangeWarning)
        out = kernel(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and rel_err(out.double(), ref) < 2e-3


@pytest.mark.parametrize("name", ["mean", "inline", "mala"])
def test_an_output_beyond_fp16_warns_once(name, monkeypatch):
    monkeypatch.setattr(core, "_warned", set())
    kernel = create_kernel(name, head_dim=16, num_heads=2)
    q, k, v = _qkv(300, 300)
    assert float(kernel(q.double(), k.double(), v.double()).abs().max()) > 65504
    with pytest.warns(AttentionRangeWarning, match=rf"the {name} attention kernel's output reaches .* float16"):
        out = kernel(q.half(), k.half(), v.half())
    assert torch.isfinite(out).all() and float(out.abs().max()) == 65504  # saturated, as documented
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionRangeWarning)
        kernel(q.half(), k.half(), v.half())  # once per kernel


def test_normalised_kernels_are_not_checked():
    assert create_kernel("qt", head_dim=16, num_heads=2).unbounded_name is None
    assert create_kernel("mean", head_dim=16, num_heads=2).unbounded_name == "mean"
