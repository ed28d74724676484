#!/usr/bin/env bash
# The segmentation job, on a fresh machine (2 CPU cores): install what is needed, get Fashion-MNIST, train QT-ViT-1's
# segmentation model on the embedded Fashion-MNIST scenes (recipe "seg-scenes", data/scenes.py), evaluate its final
# weights on the 1000 test scenes (mIoU over 11 classes, per-class IoU), draw predictions beside the ground truth,
# and print the mIoU as the last line. Extra arguments go to `qtvit train`: `--model efficientvit_seg_b1_ade20k`
# trains the EfficientViT-Seg counterpart with the same recipe.
# Environment: QTVIT_OUTPUT (default runs/), QTVIT_RUN (run name, default seg-job-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

# 1-2. Fashion-MNIST (Debian's package) and the package with its training and plotting extras.
QTVIT_EXTRAS=train,plot . scripts/setup_env.sh
echo "seg_job: installed in $(( $(date +%s) - t0 )) s"

# Two processes of one thread each (DDP over gloo, batch 4 each: global batch 8, as the recipe's one process of 8;
# scripts/train_launch.sh), one loader worker each: 1.09x the training images/s of one process of two threads
# (scripts/bench_train_speed.py --recipe seg-scenes --workers 1). QTVIT_PROCS=1 trains in one process with the
# recipe's batch 8.
. scripts/train_launch.sh
train_launcher 8 --workers 1

# 3. Train, then evaluate the final weights (the last checkpoint: the test scenes pick nothing) single-scale, and with
#    the multi-scale flip test (the scenes at 2/3, 1 and 4/3 of the evaluation size and mirrored, the class
#    probabilities averaged: mmsegmentation's "MS+flip"), and draw them.
out="${QTVIT_OUTPUT:-runs}"
run="${QTVIT_RUN:-seg-job-$(date +%Y%m%d-%H%M%S)}"
"${launch[@]}" --recipe seg-scenes --output "$out" --name "$run" "$@"
final="$out/$run/checkpoints/$(cat "$out/$run/checkpoints/latest")"
single=$(qtvit validate --checkpoint "$final" -b 8 --workers 2 --json)
echo "$single" > "$out/$run/test_result_single_scale.json"
result=$(qtvit validate --checkpoint "$final" -b 8 --workers 2 --flip --scales 0.6667 1 1.3333 --json)
echo "$result" > "$out/$run/test_result.json"
qtvit figure segmentation --checkpoint "$final" --images 6 --out "$out/$run/predictions.png"
python - "$result" "$(( $(date +%s) - t0 ))" "$single" <<'PY'
import json, sys
r, single = json.loads(sys.argv[1]), json.loads(sys.argv[3])
print(f"seg_job: {r['model']} on the Fashion-MNIST scenes' test split ({r['images']} scenes), wall time "
      f"{int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s; IoU per class:")
for name, iou in r["per_class_iou"].items():
    print(f"  {name:<12} " + (f"{iou:6.2f}%" if iou is not None else "   n/a (absent)"))
print(f"mAcc {r['macc']:.2f}%, aAcc {r['aacc']:.2f}%; single-scale test mIoU {single['miou']:.2f}%")
print(f"test mIoU: {r['miou']:.2f}% (multi-scale {'/'.join(f'{s:g}' for s in r['scales'])} + flip test)")
PY
