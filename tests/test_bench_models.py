"""Model benchmark: rows, fields, FLOPs, the skip guard, CSV/plot/table and the interleaved timer."""
from __future__ import annotations

import os

import pytest
import torch

from qtvit._utils import parse_kv, parse_model_spec, parse_size
from qtvit.tools.bench.models import (FIELDS, benchmark_models, count_flops, interleaved_times, markdown_table, plot,
                                      write_csv)
from qtvit.tools.results import provenance, read_csv


def test_parse_size():
    assert parse_size("224") == (224, 224)
    assert parse_size("512x1024") == (512, 1024)
    assert parse_size("512×1024") == (512, 1024)
    assert parse_size(96) == (96, 96)
    for bad in ("a", "0", "1x2x3", "-4"):
        with pytest.raises(ValueError, match="bad image size"):
            parse_size(bad)


def test_model_specs_carry_constructor_arguments():
    assert parse_kv("kernel=softmax") == ("kernel", "softmax") and parse_kv("drop=0.1") == ("drop", 0.1)
    assert parse_model_spec("qtvit_nano:kernel=relu:pos_embed_size=32") == (
        "qtvit_nano", {"kernel": "relu", "pos_embed_size": 32})
    assert parse_model_spec("qtvit_nano") == ("qtvit_nano", {})
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_model_spec("qtvit_nano:relu")
    rows = benchmark_models(["qtvit_nano:kernel=softmax"], ["32"], batch_sizes=[1], modes=["eager"], repeats=1,
                            flops=False, memory=False)
    assert [r["model"] for r in rows] == ["qtvit_nano:kernel=softmax"]
    from qtvit.tools.bench.paths import build_model
    kernels = {type(m).__name__ for m in build_model("qtvit_nano:kernel=softmax").modules() if hasattr(m, "chunk_size")}
    assert kernels and all("Softmax" in k for k in kernels), kernels


def test_count_flops_of_a_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 3, 8, 8)) == 2 * 8 * 8 * 8 * 27  # 2 per multiply-add


@pytest.fixture(scope="module")
def rows():
    return benchmark_models(["qtvit_nano"], ["32x48", "32"], batch_sizes=[2, 1], modes=["eager", "fused"],
                            repeats=2, num_classes=10)


def test_rows_have_the_fields_and_sensible_values(rows):
    import qtvit

    params_m = sum(p.numel() for p in qtvit.create_model("qtvit_nano", num_classes=10).parameters()) / 1e6
    assert len(rows) == 2 * 2 * 2
    assert all(list(r) == FIELDS for r in rows)
    # sizes run smallest first, batch 1 before batch 2
    assert [(r["mode"], r["height"], r["width"], r["batch"]) for r in rows[:4]] == [
        ("eager", 32, 32, 1), ("eager", 32, 32, 2), ("eager", 32, 48, 1), ("eager", 32, 48, 2)]
    for r in rows:
        assert r["model"] == "qtvit_nano" and r["dtype"] == "float32" and r["device"] == "cpu"
        assert r["time_ms"] > 0 and r["runs"] == 2 and r["note"] == ""
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["time_ms"] * 1e3, rel=1e-2)
        assert r["gflops"] == pytest.approx(2 * r["gmacs"], abs=2e-4)
        assert r["peak_mib"] != "" and r["peak_mib"] >= 0
        assert r["params_m"] == pytest.approx(params_m, abs=1e-3)
    g = {(r["height"], r["width"]): r["gmacs"] for r in rows}
    assert g[(32, 48)] / g[(32, 32)] == pytest.approx(1.5, rel=0.05)  # the cost is linear in tokens
    assert all(r["setup_s"] != "" for r in rows if r["mode"] == "fused")


def test_guard_skips_larger_sizes():
    rows = benchmark_models(["qtvit_nano"], ["32", "48"], batch_sizes=[1, 4], modes=["eager"], repeats=2,
                            max_call_s=0.0, flops=False, memory=False, num_classes=10)
    assert len(rows) == 4
    first = rows[0]
    assert first["runs"] == 1 and "larger sizes skipped" in first["note"]
    assert rows[1]["batch"] == 4 and rows[1]["time_ms"] == "" and "batch-1 time x 4" in rows[1]["note"]
    assert all(r["time_ms"] == "" and r["note"].startswith("skipped") for r in rows[2:])


def test_bad_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        benchmark_models(["qtvit_nano"], ["32"], modes=["tensorrt"])


def test_csv_plot_and_table(rows, tmp_path):
    path = tmp_path / "m.csv"
    write_csv(rows, path, "test machine")
    assert path.read_text().startswith("# test machine\n")
    back = read_csv(path)
    assert len(back) == len(rows) and back[0]["model"] == "qtvit_nano"
    plot(back, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    # written atomically with the mode any file the user writes gets (0644 under umask 022), no temporary left
    assert sorted(os.listdir(tmp_path)) == ["m.csv", "m.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert all((tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask for f in ("m.csv", "m.png"))
    table = markdown_table(back, batch=1)
    lines = table.splitlines()
    assert lines[0] == "| model | mode | 32 | 32x48 |" and len(lines) == 4
    assert lines[2].startswith("| qtvit_nano | eager | ")


def test_interleaved_order():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert len(times["a"]) == len(times["b"]) == 3


def test_compile_only_at_compile_sizes():
    rows = benchmark_models(["qtvit_nano"], ["32"], batch_sizes=[1], modes=["compile"], compile_sizes=["48"],
                            flops=False, memory=False, num_classes=10)
    assert len(rows) == 1 and rows[0]["time_ms"] == "" and "compile_sizes" in rows[0]["note"]


def test_interleaved_rows():
    from qtvit.tools.bench.models import benchmark_interleaved

    rows = benchmark_interleaved(["qtvit_nano", "efficientvit_nano"], "32", repeats=2, num_classes=10)
    assert [r["model"] for r in rows] == ["qtvit_nano", "efficientvit_nano"]
    assert all(list(r) == FIELDS and r["time_ms"] > 0 and r["runs"] == 2 and r["mode"] == "eager" for r in rows)
    assert rows[0]["gmacs"] == pytest.approx(rows[1]["gmacs"], rel=0.02)  # QT adds almost no MACs


def test_results_writer_fails_cleanly(tmp_path):
    from qtvit.tools import results

    path = tmp_path / "r.csv"
    results.write_csv([{"a": 1}], path, "first", ["a"])
    with pytest.raises(ValueError, match="not in fieldnames"):  # a row that does not fit leaves the old file
        results.write_csv([{"a": 2, "b": 3}], path, "second", ["a"])
    assert read_csv(path) == [{"a": "1"}] and os.listdir(tmp_path) == ["r.csv"]
    assert provenance(path) == "first"
    results.write_csv([{"a": 2, "b": 3}], path, "second", ["a"], extrasaction="ignore")
    assert read_csv(path) == [{"a": "2"}] and provenance(path) == "second"
    (tmp_path / "plain.csv").write_text("a\n1\n")
    assert provenance(tmp_path / "plain.csv") == ""


def test_kernel_benchmark_takes_one_shot_iterables():
    from qtvit.tools.bench.kernels import benchmark_kernels

    rows = benchmark_kernels(iter(["qt", "relu"]), [64, 128], head_dims=(8, 16), modes=iter(["fwd"]), repeats=1)
    # every kernel at every head dim and N: the iterables are not used up by the first head dim
    assert sorted((r["kernel"], r["head_dim"], r["n"]) for r in rows) == sorted(
        (k, d, n) for k in ("qt", "relu") for d in (8, 16) for n in (64, 128))
    assert all(r["path"] == "eager" and r["time_ms"] > 0 for r in rows)
