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

# 3. Train, then evaluate the final weights (the last checkpoint: the test scenes pick nothing; with the flip test,
#    each scene's logits averaged with its mirror image's) and draw them.
out="${QTVIT_OUTPUT:-runs}"
run="${QTVIT_RUN:-seg-job-$(date +%Y%m%d-%H%M%S)}"
qtvit train --recipe seg-scenes --output "$out" --name "$run" "$@"
final="$out/$run/checkpoints/$(cat "$out/$run/checkpoints/latest")"
result=$(qtvit validate --checkpoint "$final" --flip --json)
echo "$result" > "$out/$run/test_result.json"
qtvit figure segmentation --checkpoint "$final" --images 6 --out "$out/$run/predictions.png"
python - "$result" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"seg_job: {r['model']} on the Fashion-MNIST scenes' test split ({r['images']} scenes), wall time "
      f"{int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s; IoU per class:")
for name, iou in r["per_class_iou"].items():
    print(f"  {name:<12} " + (f"{iou:6.2f}%" if iou is not None else "   n/a (absent)"))
print(f"mAcc {r['macc']:.2f}%, aAcc {r['aacc']:.2f}%")
print(f"test mIoU: {r['miou']:.2f}%" + (" (flip test)" if r.get("flip") else ""))
PY
