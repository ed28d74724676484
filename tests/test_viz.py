"""Figures: explicit attention maps of one query (rows sum to 1) and the Pareto plot."""
from __future__ import annotations

import os

import pytest
import torch

import qtvit
from qtvit.cli import main
from qtvit.tools.figures import (PAPER_KERNELS, attention_rows, load_image, model_tokens, pareto_front,
                       pareto_rows_from_benchmark, patch_tokens, plot_attention_maps, plot_pareto, read_pareto_csv)

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


@pytest.fixture(scope="module")
def image():
    return load_image(None, 64)  # matplotlib's sample photograph


def test_load_image_is_rgb_in_unit_range(image):
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) < float(image.max()) <= 1.0
    assert float(image.std()) > 0.1  # a real photo, not a blank


def test_patch_tokens_are_whitened(image):
    tok, grid = patch_tokens(image, patch=8, dim=6)
    assert grid == (8, 8) and tok.shape == (1, 1, 64, 6)
    x = tok[0, 0].double()
    cov = x.T @ x / (x.shape[0] - 1)
    torch.testing.assert_close(cov, torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="multiple of the patch"):
        patch_tokens(image, patch=10)


def test_rows_sum_to_one_and_match_the_full_explicit_map(image):
    tok, _ = patch_tokens(image, patch=8, dim=8)
    rows = attention_rows(tok, tok, query=27, kernels=PAPER_KERNELS)
    assert list(rows) == list(PAPER_KERNELS)
    for name, row in rows.items():
        assert row.shape == (64,)
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-5), name
        full = qtvit.attention_map(tok, tok, kernel=name)[0, 0, 27]
        torch.testing.assert_close(row, full, atol=1e-6, rtol=1e-5)
    for name in ("softmax", "relu", "taylor2", "qt"):  # non-negative kernels
        assert float(rows[name].min()) >= 0.0, name
    logits = tok[0, 0, 27] @ tok[0, 0].T / 8 ** 0.5
    torch.testing.assert_close(rows["softmax"], torch.softmax(logits, -1), atol=1e-6, rtol=1e-5)
    assert int(rows["softmax"].argmax()) == 27  # a whitened token is most similar to itself
    with pytest.raises(ValueError, match="out of range"):
        attention_rows(tok, tok, query=64)


def test_model_tokens_from_an_attention_layer(image):
    torch.manual_seed(0)
    from qtvit.tools.export import calibrate_batchnorm

    # At init the activations vanish (q, k ~ 1e-14, below the kernels' eps); BN statistics of one batch fix that.
    model = calibrate_batchnorm(qtvit.create_model("qtvit_nano", num_classes=10), (32, 48))
    img = image[:, :32, :48]
    q, k, grid = model_tokens(model, img, layer=-1, head=1)
    assert grid == (4, 6) and q.shape == k.shape == (1, 1, 24, 16)
    rows = attention_rows(q, k, query=5, kernels=("qt", "relu"))
    assert all(float(r.sum()) == pytest.approx(1.0, abs=1e-5) for r in rows.values())
    with pytest.raises(ValueError, match="out of range"):
        model_tokens(model, img, layer=99)


def test_attention_figure_png(image, tmp_path):
    tok, grid = patch_tokens(image, patch=16, dim=8)
    rows = attention_rows(tok, tok, query=5)
    path = plot_attention_maps(image, rows, grid, 5, tmp_path / "maps.png", title="test")
    assert _is_png(path)


def test_pareto_front_and_csv(tmp_path):
    csv = tmp_path / "acc.csv"
    csv.write_text("# accuracy of my runs\nmodel,top1,latency_ms\nqtvit_1,79.6,10\nqtvit_2,82.5,30\n"
                   "efficientvit_b1,79.4,9\nefficientvit_b2,82.1,31\nslow_bad,70,50\n")
    rows = read_pareto_csv(csv)
    assert [r["family"] for r in rows] == ["qtvit", "qtvit", "efficientvit", "efficientvit", "slow"]
    assert [r["model"] for r in pareto_front(rows)] == ["efficientvit_b1", "qtvit_1", "qtvit_2"]
    assert _is_png(plot_pareto(rows, tmp_path / "p.png"))
    bad = tmp_path / "bad.csv"
    bad.write_text("model,acc,latency_ms\nx,1,2\n")
    with pytest.raises(ValueError, match="top1"):
        read_pareto_csv(bad)
    bad.write_text("model,top1,latency_ms\nx,high,2\n")
    with pytest.raises(ValueError, match="must be numbers"):
        read_pareto_csv(bad)


def test_pareto_from_a_benchmark_csv(tmp_path):
    from qtvit.tools.bench.models import FIELDS, write_csv

    base = dict.fromkeys(FIELDS, "")
    rows = [dict(base, model="qtvit_1", height=224, width=224, batch=1, mode="eager", time_ms=12.0),
            dict(base, model="qtvit_1", height=224, width=224, batch=1, mode="fused", time_ms=8.0),
            dict(base, model="efficientvit_b1", height=224, width=224, batch=1, mode="eager", time_ms=11.0),
            dict(base, model="efficientvit_b1", height=512, width=512, batch=1, mode="eager", time_ms=60.0)]
    path = tmp_path / "bench.csv"
    write_csv(rows, path, "test machine")
    got = pareto_rows_from_benchmark(path)
    assert {(r["model"], r["top1"], r["latency_ms"]) for r in got} == {("qtvit_1", 79.6, 12.0),
                                                                        ("efficientvit_b1", 79.4, 11.0)}
    with pytest.raises(ValueError, match="no measured"):
        pareto_rows_from_benchmark(path, size="1024")
    from qtvit.tools.figures import write_pareto_csv
    out = write_pareto_csv(got, tmp_path / "fig" / "pareto.csv", "test machine")
    assert out.read_text().splitlines()[:2] == ["# test machine", "model,family,top1,latency_ms,params_m,gmacs"]
    assert {r["model"] for r in read_pareto_csv(out)} == {"qtvit_1", "efficientvit_b1"}
    assert os.listdir(out.parent) == ["pareto.csv"]  # atomic: no temporary left beside it


def test_figure_cli(tmp_path, capsys):
    out = tmp_path / "att.png"
    assert main(["figure", "attention", "--img-size", "64", "--patch", "16", "--query", "1", "2",
                 "--out", str(out)]) == 0
    assert _is_png(out)
    assert main(["figure", "attention", "--kernels", "nope", "--out", str(out)]) == 1
    assert "unknown kernel(s) nope" in capsys.readouterr().err
    assert main(["figure", "attention", "--img-size", "64", "--query", "9", "0", "--out", str(out)]) == 1
    assert "outside the 4x4 token grid" in capsys.readouterr().err
    assert main(["figure", "pareto", "--csv", str(tmp_path / "missing.csv")]) == 1
    assert "no CSV" in capsys.readouterr().err


def test_rows_of_every_kernel_are_rows_of_its_full_map(image):
    # castling adds 0.5·v_i to token i: it needs every query, so a row is cut from the whole map
    tok, _ = patch_tokens(image, patch=8, dim=8)
    kernels = qtvit.list_kernels()
    assert "castling" in kernels
    rows = attention_rows(tok, tok, query=27, kernels=kernels)
    for name in kernels:
        full = qtvit.attention_map(tok, tok, kernel=name)[0, 0, 27]  # one head: its row is the mean over heads
        torch.testing.assert_close(rows[name], full, atol=1e-6, rtol=1e-5, msg=name)
