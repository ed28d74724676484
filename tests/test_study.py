"""`qtvit study kernels`: the pointer canvases, the study net, the fidelity measures, and the small mode end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qtvit.cli import main
from qtvit.data import load_fashion_mnist
from qtvit.tools.study.fidelity import map_fidelity
from qtvit.tools.study.kernels import summarise
from qtvit.tools.study.stats import fisher_exact as fisher
from qtvit.tools.study.summary import markdown_summary
from qtvit.tools.study.net import CONTROL, StudyNet
from qtvit.tools.study.runs import _to_input
from qtvit.tools.study.task import PointerSpec, make_pointer_canvases, marker_slices
from qtvit.tools.results import read_csv
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
    empty = PointerSpec(marked_cell="empty")  # the first and second versions: the marked cell holds the marker only
    xe, _ = make_pointer_canvases(images, labels, 16, split="test", seed=3, spec=empty)
    for canvas, canvas_e, cell in zip(x[:, 0].clone(), xe[:, 0].clone(), full.int().argmax(1).tolist()):
        for rows, cols in marker_slices(spec, cell):
            canvas[rows, cols] = canvas_e[rows, cols] = 0
        r, c = divmod(cell, 2)
        region = (slice(r * half, (r + 1) * half), slice(c * half, (c + 1) * half))
        assert int(canvas_e[region].max()) < 100 and int(canvas[region].max()) > 150  # noise / a garment
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
        for rows, cols in marker_slices(spec, marked[0]):
            canvas[rows, cols] = 0
        peaks = [int(canvas[r * half:(r + 1) * half, c * half:(c + 1) * half].max()) for r in (0, 1) for c in (0, 1)]
        assert peaks[3 - marked[0]] == 120 + 25 * label  # the opposite cell's garment is the label's class
        assert len(set(peaks)) == 4 and set(peaks) <= {120 + 25 * i for i in range(len(classes))}  # four classes
    with pytest.raises(ValueError, match="marked_cell"):
        PointerSpec(marked_cell="dark")


@pytest.mark.parametrize("num_classes", [4, 6])
def test_an_additive_readout_cannot_beat_one_third(num_classes):
    """The control's ceiling (task.py): its tokens that see the marker know the marked cell p and the class X beside
    it, the others at most the whole arrangement of classes in cells. The best readout that adds one term per source,
    logits G[p, X] + H[arrangement], fitted to every case, gets 1/3 of the labels (the class opposite p), while a
    readout of both at once gets all of them."""
    import itertools

    perms = torch.tensor(list(itertools.permutations(range(num_classes), 4)))  # class in each cell
    arrangement, p = torch.cartesian_prod(torch.arange(len(perms)), torch.arange(4)).T
    x, y = perms[arrangement, p], perms[arrangement, 3 - p]
    g = torch.zeros(4, num_classes, num_classes, requires_grad=True)
    h = torch.zeros(len(perms), num_classes, requires_grad=True)
    opt = torch.optim.Adam([g, h], lr=0.05)
    for _ in range(1500):
        loss = torch.nn.functional.cross_entropy(g[p, x] + h[arrangement], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() == pytest.approx(math.log(3), abs=1e-3)  # uniform over the three garments that are not X
    assert float(((g[p, x] + h[arrangement]).argmax(1) == y).float().mean()) <= 1 / 3 + 1e-6
    joint = torch.zeros(len(perms), 4, num_classes)
    joint[arrangement, p, y] = 1.0  # a readout of both at once
    assert bool((joint[arrangement, p].argmax(1) == y).all())


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


def test_control_tokens_that_see_the_marker_see_only_its_cell():
    from qtvit.tools.study.task import CONTROL_VIEW

    spec = PointerSpec(marker=PointerSpec().size // 2 - CONTROL_VIEW + 1)  # the largest marker the spec allows
    with pytest.raises(ValueError, match="must not reach another cell"):
        PointerSpec(marker=spec.marker + 1)
    torch.manual_seed(0)
    ctrl = StudyNet(CONTROL, dim=16, img_size=spec.size, head_dim=8).eval()
    half, (rows, cols) = spec.size // 2, marker_slices(spec, 0)[0]
    seen = 0
    for ty in range(8):
        for tx in range(8):
            x = torch.zeros(1, 1, spec.size, spec.size, requires_grad=True)
            feats = ctrl.stem(x) + ctrl.pos
            for blk in ctrl.blocks:
                feats = blk(feats)
            feats[0, :, ty, tx].sum().backward()
            view = (x.grad[0, 0] != 0).nonzero()
            span = view.max(0).values - view.min(0).values + 1
            assert int(span.max()) <= CONTROL_VIEW  # what the spec's check assumes of the control
            if x.grad[0, 0, rows, cols].abs().max() > 0:  # this token sees the marker of cell 0 ...
                seen += 1
                assert x.grad[0, 0, half:, :].abs().max() == 0 and x.grad[0, 0, :, half:].abs().max() == 0  # only
    assert seen >= 4


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
    runs = [dict(variant=v, top1=t, train_images_per_s=10.0, peak_mib=1.0, params=5, recipe_epochs=8)
            for v, t in [("softmax", 80.0), ("softmax", 82.0), (CONTROL, 40.0), (CONTROL, 42.0)]]
    rows, verdict = summarise(runs)
    soft = rows[0]
    assert soft["top1_mean"] == 81.0 and soft["top1_std"] == pytest.approx(math.sqrt(2))
    # 95 % interval: 81 ± t(0.975, 1)·√2/√2 = 81 ± 12.706
    assert (soft["top1_ci95_low"], soft["top1_ci95_high"]) == pytest.approx((81 - 12.7062047, 81 + 12.7062047))
    assert rows[1]["top1_minus_softmax"] == -40.0 and "attention matters" in verdict and "NOT" not in verdict
    # Welch: t = 40/√(1 + 1) = 28.28 on 2 degrees of freedom, p = 1 - t/√(2 + t²) (closed form for df = 2)
    assert rows[1]["p_vs_softmax"] == pytest.approx(1 - 800 ** 0.5 / (2 + 800) ** 0.5, rel=1e-9)
    assert soft["p_vs_softmax"] is None and rows[1]["p_vs_control"] is None and soft["p_vs_1x"] is None
    # softmax 80.5, control 82.5
    assert "NOT shown" in summarise([dict(r, top1=80.0 + i) for i, r in enumerate(runs)])[1]
    assert "one seed" in summarise(runs[::2])[1] and summarise(runs[::2])[0][0]["top1_ci95_low"] is None


def test_summary_compares_longer_runs_with_softmax_and_the_control_trained_as_long():
    def runs(variant, values, epochs):
        return [dict(variant=variant, top1=t, train_images_per_s=1.0, peak_mib="", params=5, recipe_epochs=epochs)
                for t in values]

    rows, _ = summarise(runs("softmax", [80, 84], 8) + runs("qt", [60, 64], 8) + runs("softmax@3x", [60, 64], 24) +
                        runs("qt@3x", [70, 74], 24) + runs("control@3x", [30, 31], 24))
    by = {r["variant"]: r for r in rows}
    assert by["qt@3x"]["top1_minus_softmax"] == 10.0 and by["qt@3x"]["epochs"] == 24  # against softmax@3x, not softmax
    assert by["qt@3x"]["p_vs_softmax"] == pytest.approx(by["qt@3x"]["p_vs_1x"])  # both differ by 10 with equal spread
    assert by["qt"]["p_vs_control"] is None  # no 1x control in these runs
    assert by["qt@3x"]["p_vs_control"] < 0.05 and by["qt@3x"]["peak_mib"] is None


def test_summary_counts_the_seeds_that_learned_the_task_apart_from_their_level():
    from qtvit.tools.study.summary import learned_threshold

    # a model at the ceiling of 1/3 measured on 2 000 canvases: standard error 1.054 points; three of them: 36.5 %
    assert learned_threshold(2000) == pytest.approx(100 / 3 + 300 * math.sqrt(2 / 9 / 2000))
    assert learned_threshold(2000) == pytest.approx(36.495, abs=1e-3) and learned_threshold(200) > 43
    runs = [dict(variant=v, top1=t, train_images_per_s=1.0, peak_mib="", params=5, recipe_epochs=24)
            for v, values in (("softmax", [85, 90, 80, 88, 92]), ("qt", [88, 89, 81, 29.5, 86]),
                              ("relu", [30, 31, 36, 60, 29]), (CONTROL, [28, 27, 30, 26, 29]))
            for t in values]
    by = {r["variant"]: r for r in summarise(runs)[0]}
    assert [by[v]["learned"] for v in ("softmax", "qt", "relu", CONTROL)] == [5, 4, 1, 0]
    assert by["qt"]["top1_learned_mean"] == pytest.approx(86.0) and by[CONTROL]["top1_learned_mean"] is None
    # 4 of 5 against 5 of 5: no evidence of a different rate
    assert by["qt"]["p_learned_vs_softmax"] == pytest.approx(1.0)
    assert by["relu"]["p_learned_vs_softmax"] == pytest.approx(10 / 210)  # 1 of 5 against 5 of 5: (5 + 5)/C(10, 6)
    assert by[CONTROL]["p_learned_vs_softmax"] == pytest.approx(2 / 252)
    assert by["softmax"]["p_learned_vs_softmax"] is None
    # a smaller test set widens the margin: relu's 36 % no longer counts with 1 000 canvases
    assert summarise(runs, test_canvases=1000)[0][2]["learned"] == 1


def test_a_run_whose_loss_turns_non_finite_is_recorded_as_diverged(monkeypatch):
    from qtvit.tools.study import runs
    from qtvit.tools.study.kernels import SMALL, make_data

    built = runs.build_net

    def build_net_that_blows_up(*args, **kwargs):  # logits turn NaN on the second (and last) training step
        net, calls = built(*args, **kwargs), []

        def hook(module, inputs, output):
            calls.append(module.training)
            return output * float("nan") if sum(calls) == 3 else output  # the memory probe is call 1

        net.register_forward_hook(hook)
        return net

    monkeypatch.setattr(runs, "build_net", build_net_that_blows_up)
    row, _ = runs.run_one("taylor1", 0, make_data(SMALL, SMALL_FMNIST), SMALL.recipe)
    assert row["diverged_at_step"] == 1 and row["top1"] is None and row["val_top1"] is None
    assert row["train_images_per_s"] > 0 and row["kernel"] == "taylor1"


def test_the_summary_keeps_diverged_seeds_out_of_the_means_and_counts_them_as_not_learned():
    def run(variant, top1):
        return dict(variant=variant, top1="" if top1 is None else top1, train_images_per_s=1.0, peak_mib="",
                    params=5, recipe_epochs=24)

    runs = [run("softmax", t) for t in (85, 90, 80, 88, 92)] + [run("taylor1", t) for t in (88, None, 86, None, 84)]
    rows, _ = summarise(runs)
    t1 = rows[1]
    assert t1["seeds"] == 5 and t1["diverged"] == 2 and t1["top1_mean"] == pytest.approx(86.0)
    assert t1["learned"] == 3 and t1["p_learned_vs_softmax"] == pytest.approx(fisher(3, 5, 5, 5))
    assert rows[0]["diverged"] == 0
    table = markdown_summary(rows)
    assert "| taylor1 | 24 | 5 (2 diverged) | 86.00 ± 2.00 |" in table and "| 3/5 |" in table
    only = summarise([run("softmax", 85), run("softmax", 90), run("taylor1", None)])[0][1]
    assert only["top1_mean"] is None and only["top1_ci95_low"] is None and only["p_vs_softmax"] is None
    assert "| taylor1 | 24 | 1 (1 diverged) | – |" in markdown_summary([only])


def test_fisher_exact_against_known_values():
    from qtvit.tools.study.stats import fisher_exact

    assert fisher_exact(8, 10, 1, 6) == pytest.approx(0.034965034965, abs=1e-12)  # scipy.stats.fisher_exact's example
    assert fisher_exact(1, 10, 11, 14) == pytest.approx(0.002759456185, abs=1e-12)
    assert fisher_exact(3, 5, 3, 5) == pytest.approx(1.0) and fisher_exact(0, 5, 5, 5) == pytest.approx(2 / 252)
    with pytest.raises(ValueError, match="0 <= a <= n"):
        fisher_exact(6, 5, 1, 5)


def test_student_t_and_welch_against_known_values():
    from qtvit.tools.study.stats import betainc, mean_ci95, t_cdf, t_quantile, welch

    for df, q975 in ((1, 12.7062047362), (4, 2.7764451052), (9, 2.2621571628), (30, 2.0422724563)):  # t tables
        assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-8)
    for t in (-3.0, -0.4, 0.0, 1.3, 25.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-14)  # Σ_{j=2..4} C(4,j) 0.4^j 0.6^(4-j)
    assert betainc(0.5, 0.5, 0.3) == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.3)), abs=1e-13)
    xs, ys = [53.8 - 8, 53.8, 53.8 + 8], [43.2 - 4.6, 43.2, 43.2 + 4.6]
    t, df, p = welch(xs, ys)
    assert t == pytest.approx(10.6 / math.sqrt(64 / 3 + 4.6 ** 2 / 3))
    assert df == pytest.approx((64 / 3 + 21.16 / 3) ** 2 / ((64 / 3) ** 2 / 2 + (21.16 / 3) ** 2 / 2))
    assert p == pytest.approx(2 * t_cdf(-t, df)) and 0.1 < p < 0.2
    lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (lo + hi) / 2 == pytest.approx(3.0) and hi - 3.0 == pytest.approx(2.7764451052 * math.sqrt(2.5 / 5))
    assert welch([1.0], [2.0, 3.0]) is None and mean_ci95([1.0]) is None
    assert welch([2.0, 2.0], [2.0, 2.0])[2] == 1.0 and welch([2.0, 2.0], [3.0, 3.0])[2] == 0.0
    with pytest.raises(ValueError, match="df > 0"):
        t_cdf(1.0, 0)


def test_variant_names_round_trip():
    from qtvit.tools.study.runs import Variant

    for name in ("qt", "mala+rope", "qt+softmax_residual", "control@3x", "rala+rope+softmax_residual@2x"):
        assert Variant.parse(name).name == name
    assert Variant.parse("qt@3x") == Variant("qt", length=3)
    for bad in ("qt@3", "qt@x", "qt+nosuch", "qt+rope+rope"):
        with pytest.raises(ValueError, match="variant"):
            Variant.parse(bad)


def test_spread_placement_removes_the_control_view_leak():
    from qtvit.tools.study.task import control_view_leak, pointer_layout

    old, new = PointerSpec(placement="inner"), PointerSpec()
    lay_old, lay_new = (pointer_layout(3000, split="val", spec=s) for s in (old, new))
    half = new.size // 2
    for lay, spec in ((lay_old, old), (lay_new, new)):
        assert (lay.tops >= 0).all() and (lay.tops + lay.sizes[..., None] <= new.size).all()
        rows, cols = np.divmod(np.arange(4), 2)
        assert ((lay.tops[..., 0] >= rows * half) & (lay.tops[..., 0] + lay.sizes <= (rows + 1) * half)).all()
        assert ((lay.tops[..., 1] >= cols * half) & (lay.tops[..., 1] + lay.sizes <= (cols + 1) * half)).all()
    # the first version: every garment within 6 px of the canvas's centre lines; now anywhere in its cell
    gap_old = np.minimum(abs(lay_old.tops - half), abs(lay_old.tops + lay_old.sizes[..., None] - half))
    gap_new = np.minimum(abs(lay_new.tops - half), abs(lay_new.tops + lay_new.sizes[..., None] - half))
    assert gap_old.max() <= 6 and gap_new.max() >= 12
    offsets = np.where(np.stack(np.divmod(np.arange(4), 2), -1) == 0, lay_new.tops,
                       new.size - lay_new.tops - lay_new.sizes[..., None])
    assert not (offsets < new.corner).all(-1).any()  # no garment over its cell's outer corner (the marker's place)
    leak_old, leak_new = control_view_leak(lay_old, old), control_view_leak(lay_new, new)
    assert leak_old["target_and_marked"] > 0.7 and leak_new["target_and_marked"] < 0.35
    assert leak_new["all_and_marked"] <= leak_new["target_and_marked"]
    with pytest.raises(ValueError, match="placement"):
        PointerSpec(placement="centre")


def test_validation_canvases_come_from_held_out_training_images():
    from qtvit.tools.study.kernels import SMALL, VAL_EVERY, make_data

    data = make_data(SMALL, SMALL_FMNIST)
    assert data.val_x.shape == (SMALL.val, 1, 64, 64) and data.val_y.shape == (SMALL.val,)
    assert not torch.equal(data.val_x, data.train_x[:SMALL.val]) and not torch.equal(data.val_x, data.test_x)
    images, labels = load_fashion_mnist("train", SMALL_FMNIST)
    held = torch.arange(len(labels)) % VAL_EVERY == VAL_EVERY - 1
    train, _ = make_pointer_canvases(images[~held], labels[~held], SMALL.train, split="train", spec=SMALL.spec)
    assert torch.equal(train, data.train_x)


def test_small_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "kernels", "--small", "--seeds", "2", "--kernels", "softmax", "qt", "--rope-kernels", "rala",
            "--long", "qt", "--long-factor", "2", "--data", SMALL_FMNIST, "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    runs = read_csv(out / "kernel_study_runs.csv")
    variants = ["softmax", "qt", "rala+rope", CONTROL, "qt+softmax_residual", "qt@2x"]
    assert [(r["variant"], int(r["seed"])) for r in runs] == [(v, s) for v in variants for s in (0, 1)]
    for r in runs:
        for col in ("top1", "val_top1", "train_images_per_s", "peak_mib", "params", "train_s"):
            assert math.isfinite(float(r[col])), (col, r)
        assert 0.0 <= float(r["top1"]) <= 100.0 and float(r["train_images_per_s"]) > 0 and int(r["params"]) > 1000
        assert int(r["recipe_epochs"]) == (2 if r["variant"] == "qt@2x" else 1) and r["device"] == "cpu"
        assert int(r["threads"]) == 1 and "torch " in r["machine"] and r["diverged_at_step"] == ""
    summary = read_csv(out / "kernel_study.csv")
    assert [r["variant"] for r in summary] == variants
    for r in summary:
        assert int(r["seeds"]) == 2 and float(r["top1_std"]) >= 0.0 and math.isfinite(float(r["top1_mean"]))
        mean = sum(float(x["top1"]) for x in runs if x["variant"] == r["variant"]) / 2
        assert float(r["top1_mean"]) == pytest.approx(mean)
        assert float(r["top1_ci95_low"]) <= mean <= float(r["top1_ci95_high"])
    assert float(summary[0]["top1_minus_softmax"]) == 0.0 and 0.0 <= float(summary[1]["p_vs_softmax"]) <= 1.0
    assert summary[-1]["p_vs_1x"] != "" and summary[-1]["p_vs_softmax"] == ""  # qt@2x: no softmax@2x to test against
    assert "control check" in (out / "kernel_study.csv").read_text().splitlines()[0]
    table = (out / "kernel_study.md").read_text().splitlines()
    assert table[0].startswith("<!-- kernel study:") and table[2].startswith("| variant | epochs | seeds |")
    assert [line.split(" | ")[0] for line in table[4:]] == [f"| {v}" for v in variants]
    for line, r in zip(table[4:], summary):
        assert f"| {float(r['top1_mean']):.2f} ± " in line and f"| {r['learned']}/2 |" in line
    fid = read_csv(out / "kernel_fidelity.csv")
    assert {(r["kernel"], r["layer"]) for r in fid} == {(k, str(i)) for k in ("softmax", "qt") for i in (0, 1)} | \
        {("softmax", "mean"), ("qt", "mean")}
    assert all(math.isfinite(float(r["kl"])) and 0 <= float(r["topk_overlap"]) <= 1 for r in fid)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot extra is optional: CSVs only
        pass
    else:
        for name in ("kernel_study.png", "kernel_fidelity.png", "kernel_fidelity_maps.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "control check" in capsys.readouterr().out
    # resuming: recorded runs are not trained again; a third seed trains only the new runs; the fidelity maps read
    # softmax seed 0's saved weights
    (out / "kernel_fidelity.csv").unlink()
    assert main(args[:4] + ["3"] + args[5:]) == 0
    printed = capsys.readouterr().out
    assert "12 runs already recorded, 6 to train" in printed
    assert "to train: " + ", ".join(f"{v} x1" for v in variants) in printed
    again = read_csv(out / "kernel_study_runs.csv")
    assert again[:12] == runs and [(r["variant"], int(r["seed"])) for r in again[12:]] == [(v, 2) for v in variants]
    assert read_csv(out / "kernel_fidelity.csv") == fid
    assert main(args[:4] + ["3"] + args[5:]) == 0
    assert "18 runs already recorded, 0 to train" in capsys.readouterr().out
    # another plan (here: more epochs) is refused, not mixed in
    assert main(args + ["--epochs", "2"]) == 1
    assert "holds runs of another plan" in capsys.readouterr().err


def test_bad_arguments_name_the_problem(tmp_path, capsys):
    cases = [(["--kernels", "nosuch"], "unknown kernel(s) nosuch"),
             (["--residual-kernels", "softmax"], "give linear kernels to --residual-kernels"),
             (["--workers", "0"], "workers (0)"),
             (["--rope-kernels", "relu"], "only mala, rala have a released RoPE"),
             (["--long", "qt+rope"], "RoPE for qt: only mala, rala"),
             (["--long", "qt@x"], "@<k>x")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available here"))
    for args, message in cases:
        assert main(["study", "kernels", "--small", *args, "--out", str(tmp_path)]) == 1
        assert message in capsys.readouterr().err, args


@pytest.mark.slow  # two spawned processes importing torch: ~45 s on a busy 2-core machine
def test_workers_give_the_same_runs_as_one_process(tmp_path):
    from qtvit.tools.study.kernels import run_study

    def rows(workers):
        out = tmp_path / f"w{workers}"
        run_study(["softmax"], 2, out, small=True, control=False, residual_kernels=(), rope_kernels=(),
                  long_variants=(), data_root=SMALL_FMNIST, workers=workers, threads=1, log=lambda _: None)
        return read_csv(out / "kernel_study_runs.csv"), read_csv(out / "kernel_fidelity.csv")

    (one, fid1), (two, fid2) = rows(1), rows(2)
    assert [(r["seed"], r["top1"], r["params"]) for r in one] == [(r["seed"], r["top1"], r["params"]) for r in two]
    assert [r["kl"] for r in fid1] == [r["kl"] for r in fid2]  # the softmax net came back from its worker intact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_cuda_matches_the_cpu_recipe():
    from qtvit.tools.study.kernels import SMALL, make_data
    from qtvit.tools.study.runs import run_one

    data = make_data(SMALL, SMALL_FMNIST)
    row, net = run_one("rala+rope", 0, data, SMALL.recipe, device="cuda")
    assert row["device"] == "cuda" and next(net.parameters()).is_cuda
    assert 0.0 <= row["top1"] <= 100.0 and row["peak_mib"] > 0 and row["train_images_per_s"] > 0


_ORPHAN = """
import os, time, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from qtvit.tools.study import kernels

def job(_):
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=kernels._init_worker,
                               initargs=(None, None, 1))
    pool.submit(job, 0)
    time.sleep(6)
    os._exit(0)  # the study killed: no shutdown of the pool
"""


def test_a_study_worker_ends_when_its_study_is_killed(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    worker = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(worker, 9)
        pytest.fail(f"study worker {worker} still trains 20 s after its study was killed")
