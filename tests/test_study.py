"""`qtvit study kernels`: the pointer canvases, the study net, the fidelity measures, and the small mode end to end."""
from __future__ import annotations

import math

import pytest
import torch

from qtvit.cli import main
from qtvit.data import load_fashion_mnist
from qtvit.study.fidelity import map_fidelity
from qtvit.study.kernels import summarise
from qtvit.study.net import CONTROL, StudyNet
from qtvit.study.runs import _to_input
from qtvit.study.task import PointerSpec, make_pointer_canvases, marker_slices
from qtvit.bench.measure import read_csv
from conftest import SMALL_FMNIST


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist("test", SMALL_FMNIST)


def test_canvases_are_deterministic_and_the_label_is_the_garment_opposite_the_marker(fmnist):
    images, labels = fmnist
    spec = PointerSpec()
    x, y = make_pointer_canvases(images, labels, 16, split="test", seed=3)
    x2, y2 = make_pointer_canvases(images, labels, 16, split="test", seed=3)
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, make_pointer_canvases(images, labels, 16, split="test", seed=4)[0])
    full = torch.stack([torch.stack([(x[:, 0, rows, cols] == 255).flatten(1).all(1)
                                     for rows, cols in marker_slices(spec, cell)]).all(0) for cell in range(4)], 1)
    assert (full.sum(dim=1) == 1).all()  # exactly one marked cell per canvas
    half = spec.size // 2
    for canvas, cell in zip(x[:, 0].clone(), full.int().argmax(1).tolist()):  # the marked cell: marker only
        for rows, cols in marker_slices(spec, cell):
            canvas[rows, cols] = 0
        r, c = divmod(cell, 2)
        assert int(canvas[r * half:(r + 1) * half, c * half:(c + 1) * half].max()) < 100  # background, noise
    with pytest.raises(ValueError, match="item_px"):
        PointerSpec(item_px=(16, 30))


def test_label_is_the_class_of_the_garment_opposite_the_marker():
    # flat "garments" whose brightness tells their class: class c is drawn at 120 + 25 * (index of c)
    spec = PointerSpec(noise=0.0)
    classes = sorted(spec.classes)
    images = torch.stack([torch.full((28, 28), 120 + 25 * i, dtype=torch.uint8) for i in range(len(classes))])
    x, y = make_pointer_canvases(images, torch.tensor(classes), 32, split="train", spec=spec)
    half = spec.size // 2
    for canvas, label in zip(x[:, 0].int(), y.tolist()):
        marked = [cell for cell in range(4) if all((canvas[rows, cols] == 255).all()
                                                   for rows, cols in marker_slices(spec, cell))]
        assert len(marked) == 1
        peaks = [int(canvas[r * half:(r + 1) * half, c * half:(c + 1) * half].max()) for r in (0, 1) for c in (0, 1)]
        assert peaks[3 - marked[0]] == 120 + 25 * label  # the opposite cell's garment is the label's class
        garments = [p for cell, p in enumerate(peaks) if cell != marked[0]]
        assert len(set(garments)) == 3 and all(p >= 120 for p in garments)  # three garments, distinct classes


def test_control_has_the_attention_budget_and_mixes_no_tokens():
    torch.manual_seed(0)
    soft, ctrl = StudyNet("softmax", dim=32, img_size=32), StudyNet(CONTROL, dim=32, img_size=32)
    n_soft, n_ctrl = (sum(p.numel() for p in m.parameters()) for m in (soft, ctrl))
    assert abs(n_soft - n_ctrl) / n_soft < 0.01
    # no token mixing beyond the convolutions' reach: a far pixel does not change a corner's token
    ctrl.eval()
    x = torch.zeros(1, 1, 32, 32, requires_grad=True)
    feats = ctrl.stem(x) + ctrl.pos
    for blk in ctrl.blocks:
        feats = blk(feats)
    feats[0, :, 0, 0].sum().backward()
    # stem: pixels 0..3 of token 0; two depthwise 3x3 convs: tokens 0..2, so pixels 0..11 and nothing beyond
    assert x.grad[0, 0, 12:, :].abs().max() == 0 and x.grad[0, 0, :, 12:].abs().max() == 0
    assert x.grad[0, 0, :4, :4].abs().max() > 0 and x.grad[0, 0, 8:12, 8:12].abs().max() > 0


def test_softmax_residual_is_training_only():
    torch.manual_seed(0)
    net = StudyNet("qt", dim=32, img_size=32, residual_softmax=True)
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    plain = net(x)
    net.set_residual_weight(0.0)
    assert torch.equal(plain, net(x))
    with pytest.raises(ValueError, match="linear kernel"):
        StudyNet("softmax", residual_softmax=True)


def test_fidelity_of_softmax_to_itself_is_near_zero_and_relu_differs():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16)
    same = map_fidelity(q, k, "softmax")
    assert same["kl"] < 2e-3 and same["topk_overlap"] == 1.0 and same["negative_mass"] == 0.0
    relu = map_fidelity(q, k, "relu")
    assert relu["kl"] > 10 * same["kl"] and 0.0 <= relu["topk_overlap"] < 1.0
    assert map_fidelity(q, k, "inline")["negative_mass"] > 0  # InLine's subtractive weights go negative


def test_summary_reports_the_control_gap():
    runs = [dict(variant=v, top1=t, train_images_per_s=10.0, peak_mib=1.0, params=5)
            for v, t in [("softmax", 80.0), ("softmax", 82.0), (CONTROL, 40.0), (CONTROL, 42.0)]]
    rows, verdict = summarise(runs)
    soft = rows[0]
    assert soft["top1_mean"] == 81.0 and soft["top1_std"] == pytest.approx(math.sqrt(2))
    assert rows[1]["top1_minus_softmax"] == -40.0 and "attention matters" in verdict and "NOT" not in verdict
    # softmax 80.5, control 82.5
    assert "NOT shown" in summarise([dict(r, top1=80.0 + i) for i, r in enumerate(runs)])[1]
    assert "one seed" in summarise(runs[::2])[1]


def test_small_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "kernels", "--small", "--seeds", "2", "--kernels", "softmax", "qt", "--data", SMALL_FMNIST,
                 "--threads", "1", "--out", str(out)]) == 0
    runs = read_csv(out / "kernel_study_runs.csv")
    variants = ["softmax", "qt", CONTROL, "qt+softmax_residual"]
    assert [(r["variant"], int(r["seed"])) for r in runs] == [(v, s) for v in variants for s in (0, 1)]
    for r in runs:
        for col in ("top1", "train_images_per_s", "peak_mib", "params", "train_s"):
            assert math.isfinite(float(r[col])), (col, r)
        assert 0.0 <= float(r["top1"]) <= 100.0 and float(r["train_images_per_s"]) > 0 and int(r["params"]) > 1000
    summary = read_csv(out / "kernel_study.csv")
    assert [r["variant"] for r in summary] == variants
    for r in summary:
        assert int(r["seeds"]) == 2 and float(r["top1_std"]) >= 0.0 and math.isfinite(float(r["top1_mean"]))
        mean = sum(float(x["top1"]) for x in runs if x["variant"] == r["variant"]) / 2
        assert float(r["top1_mean"]) == pytest.approx(mean)
    assert float(summary[0]["top1_minus_softmax"]) == 0.0
    assert "control check" in (out / "kernel_study.csv").read_text().splitlines()[0]
    fid = read_csv(out / "kernel_fidelity.csv")
    assert {(r["kernel"], r["layer"]) for r in fid} == {(k, str(i)) for k in ("softmax", "qt") for i in (0, 1)} | \
        {("softmax", "mean"), ("qt", "mean")}
    assert all(math.isfinite(float(r["kl"])) and 0 <= float(r["topk_overlap"]) <= 1 for r in fid)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot extra is optional: CSVs only
        return
    else:
        for name in ("kernel_study.png", "kernel_fidelity.png", "kernel_fidelity_maps.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "control check" in capsys.readouterr().out


def test_bad_arguments_name_the_problem(tmp_path, capsys):
    assert main(["study", "kernels", "--small", "--kernels", "nosuch", "--out", str(tmp_path)]) == 1
    assert "unknown kernel(s) nosuch" in capsys.readouterr().err
    assert main(["study", "kernels", "--small", "--residual-kernels", "softmax", "--out", str(tmp_path)]) == 1
    assert "give linear kernels to --residual-kernels" in capsys.readouterr().err
    assert main(["study", "kernels", "--small", "--workers", "0", "--out", str(tmp_path)]) == 1
    assert "workers (0) must be at least 1" in capsys.readouterr().err


@pytest.mark.slow  # two spawned processes importing torch: ~45 s on a busy 2-core machine
def test_workers_give_the_same_runs_as_one_process(tmp_path):
    from qtvit.study.kernels import run_study

    def rows(workers):
        out = tmp_path / f"w{workers}"
        run_study(["softmax"], 2, out, small=True, control=False, residual_kernels=(), data_root=SMALL_FMNIST,
                  workers=workers, threads=1, log=lambda _: None)
        return read_csv(out / "kernel_study_runs.csv"), read_csv(out / "kernel_fidelity.csv")

    (one, fid1), (two, fid2) = rows(1), rows(2)
    assert [(r["seed"], r["top1"], r["params"]) for r in one] == [(r["seed"], r["top1"], r["params"]) for r in two]
    assert [r["kl"] for r in fid1] == [r["kl"] for r in fid2]  # the softmax net came back from its worker intact
