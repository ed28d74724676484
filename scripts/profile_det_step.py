"""Where one Mask R-CNN training step spends its time on the CPU: torch.profiler over a step of maskrcnn_qtvit_1
on the Fashion-MNIST scene instances (256 px, batch 4, AdamW), after one warm-up step.

Forward parts are labelled by module (transform, backbone, FPN, RPN with its proposals, RoIAlign for boxes and
masks, box and mask heads, training-sample selection); backward is split by operator (convolutions, RoIAlign,
...). Usage: python scripts/profile_det_step.py [--threads 2] [--batch 4] [--size 256] [--model maskrcnn_qtvit_1]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import qtvit
from qtvit.data import load_fashion_mnist
from qtvit.data.det_transforms import detection_transform
from qtvit.data.scene_instances import FashionMNISTSceneInstances
from qtvit.data.scenes import FashionMNISTScenes
from qtvit.train.evaluate import load_model

PARTS = {"transform": "transform", "backbone.fpn": "FPN", "rpn.head": "RPN head",
         "rpn.anchor_generator": "anchors", "roi_heads.box_roi_pool": "RoIAlign boxes (fwd)",
         "roi_heads.box_head": "box head", "roi_heads.box_predictor": "box predictor",
         "roi_heads.mask_roi_pool": "RoIAlign masks (fwd)", "roi_heads.mask_head": "mask head",
         "roi_heads.mask_predictor": "mask predictor"}


def label_modules(model: torch.nn.Module) -> None:
    """Wrap each part's forward in a profiler range named after it."""
    for name, label in PARTS.items():
        module = model.get_submodule(name)
        forward = module.forward
        module.forward = (lambda f, lab: lambda *a, **k: _ranged(lab, f, *a, **k))(forward, label)
    for obj, method, label in [(model.backbone.body, "forward_intermediates", "backbone"),
                               (model.rpn, "filter_proposals", "proposals (decode, NMS)"),
                               (model.rpn, "assign_targets_to_anchors", "RPN anchor matching"),
                               (model.roi_heads, "select_training_samples", "RoI sampling (matching)")]:
        setattr(obj, method, (lambda f, lab: lambda *a, **k: _ranged(lab, f, *a, **k))(getattr(obj, method), label))


EXTRA = ("backbone", "proposals (decode, NMS)", "RPN anchor matching", "RoI sampling (matching)")


def _ranged(label, f, *args, **kwargs):
    with record_function(label):
        return f(*args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--model", default="maskrcnn_qtvit_1")
    p.add_argument("--model-kwargs", default="{}", help="the detector's options as json, e.g. "
                   "'{\"fpn_channels\": 128, \"box_batch_size_per_image\": 128}'")
    p.add_argument("--checkpoint", default=None, help="profile this trained detector (a run or weights file) "
                   "instead of a new --model")
    p.add_argument("--shapes", action="store_true", help="also the slowest convolution backwards by input shape")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_fashion_mnist("train")
    data = FashionMNISTSceneInstances(FashionMNISTScenes(x, y, 64), transform=detection_transform(True, args.size))
    t0 = time.perf_counter()
    batches = [[data[i * args.batch + j] for j in range(args.batch)] for i in range(5)]
    data_s = (time.perf_counter() - t0) / 5
    if args.checkpoint:  # a trained detector: its RPN's proposals find the objects, so the RoI heads work at full load
        model = load_model(args.checkpoint)
        args.model = f"{model.pretrained_cfg.get('architecture', args.model)} from {args.checkpoint}"
    else:
        model = qtvit.create_model(args.model, num_classes=11, min_size=args.size, max_size=args.size,
                                   **{"anchor_sizes": (16, 32, 64, 128, 256), **json.loads(args.model_kwargs)})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step(batch):
        images, targets = [b[0] for b in batch], [b[1] for b in batch]
        with record_function("forward"):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()

    step(batches[0])  # warm-up
    label_modules(model)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        step(batches[1])
    profiled = time.perf_counter() - t0
    times = []
    for batch in batches[2:]:
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    plain = sorted(times)[len(times) // 2]
    report(prof, profiled, plain, data_s, args)


def report(prof, profiled: float, plain: float, data_s: float, args) -> None:
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e3 for e in events}  # ms, ranges include their children
    self_ms = defaultdict(float)
    for e in events:
        self_ms[e.key] += e.self_cpu_time_total / 1e3
    print(f"# {args.model} {args.model_kwargs}, {args.batch} x {args.size} px, {args.threads} threads, torch {torch.__version__}")
    print(f"step: {plain * 1e3:.0f} ms unprofiled (median of 3, {args.batch / plain:.2f} images/s), {profiled * 1e3:.0f} ms "
          f"profiled; data (scene + instances + augmentation): {data_s * 1e3:.0f} ms per batch, one process")
    print("\n| part | ms | % of step |\n|---|---:|---:|")
    step_ms = sum(total.get(k, 0) for k in ("forward", "backward", "optimizer"))
    for key in ["forward", "backbone", *PARTS.values(), *EXTRA[1:], "backward", "optimizer"]:
        if key in total:
            indent = "" if key in ("forward", "backward", "optimizer") else "  "
            print(f"| {indent}{key} | {total[key]:.0f} | {100 * total[key] / step_ms:.1f} |")
    print("\nbackward and forward, by operator (self time, top 12):\n\n| operator | ms |\n|---|---:|")
    for key, ms in sorted(self_ms.items(), key=lambda kv: -kv[1])[:16]:
        if key not in ("forward", "backward", "optimizer", *EXTRA, *PARTS.values()):
            print(f"| {key} | {ms:.0f} |")
    if args.shapes:
        print("\nconvolution backward by shape (grad, input, weight), top 10:\n\n| shapes | groups | ms |\n|---|---:|---:|")
        convs = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::convolution_backward"]
        for e in sorted(convs, key=lambda e: -e.self_cpu_time_total)[:10]:
            shapes = e.input_shapes
            print(f"| {shapes[0]}, {shapes[1]}, {shapes[2]} | {e.count} calls | {e.self_cpu_time_total / 1e3:.0f} |")


if __name__ == "__main__":
    main()
