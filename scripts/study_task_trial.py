"""One design trial of the kernel study's task: train one variant with one seed on pointer canvases of the given
settings and print its top-1 on the **validation** canvases (no test canvas is made), as one JSON line.

    python scripts/study_task_trial.py softmax 0 '{"classes": [0, 1, 3, 5, 8, 9], "marker": 10}' --epochs 24
    python scripts/study_task_trial.py softmax 0 '{}' --sincos-positions   # positions start from a 2-D sin-cos table

The trials that chose the third task version are in results/kernel_study_design_trials.jsonl (docs/kernel_study.md,
"The third version").
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

import qtvit.tools.study.runs as runs
from qtvit.data.fashion_mnist import load_fashion_mnist
from qtvit.tools.study.kernels import FULL, VAL_EVERY
from qtvit.tools.study.task import PointerSpec, make_pointer_canvases


def sincos_table(dim: int, grid: int) -> torch.Tensor:
    """(1, dim, grid, grid): sin and cos of each axis's position at dim/4 frequencies (MAE's 2-D table)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    ys, xs = torch.meshgrid(*(torch.arange(grid, dtype=torch.float32),) * 2, indexing="ij")
    parts = [f(axis[..., None] * omega) for axis in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, -1).permute(2, 0, 1)[None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant")
    ap.add_argument("seed", type=int)
    ap.add_argument("spec", help="PointerSpec settings as JSON, e.g. '{\"marker\": 10}'")
    ap.add_argument("--epochs", type=int, default=FULL.recipe.epochs)
    ap.add_argument("--sincos-positions", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = PointerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.spec).items()})
    if args.sincos_positions:
        build = runs.build_net

        def build_sincos(*a, **k):
            net = build(*a, **k)
            with torch.no_grad():
                net.pos.copy_(sincos_table(net.pos.shape[1], net.pos.shape[2]))
            return net

        runs.build_net = build_sincos
    images, labels = load_fashion_mnist("train")
    held = torch.arange(len(labels)) % VAL_EVERY == VAL_EVERY - 1
    train = make_pointer_canvases(images[~held], labels[~held], FULL.train, split="train", spec=spec)
    val = make_pointer_canvases(images[held], labels[held], FULL.val, split="val", spec=spec)
    data = runs.Data(*train, *val, num_classes=len(spec.classes))  # validation canvases in the test slot
    t0 = time.perf_counter()
    row, _ = runs.run_one(args.variant, args.seed, data, replace(FULL.recipe, epochs=args.epochs))
    print(json.dumps(dict(variant=args.variant, seed=args.seed, spec=json.loads(args.spec), epochs=args.epochs,
                          sincos_positions=args.sincos_positions, val_top1=row["top1"],
                          seconds=round(time.perf_counter() - t0))), flush=True)


if __name__ == "__main__":
    main()
