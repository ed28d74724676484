#!/usr/bin/env bash
# The main job, on a fresh machine (2 CPU cores are enough): install what is needed, get Fashion-MNIST, train a
# small QT-ViT (recipe "fashion-mnist"), evaluate its final weights on the 10 000 test images and print the
# test top-1 as the last line. Extra arguments go to `qtvit train` (e.g. --epochs 3).
# Environment: QTVIT_OUTPUT (default runs/), QTVIT_RUN (run name, default main-job-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

# 1-2. Fashion-MNIST (Debian's package) and the package with its training extra (kornia, torchmetrics).
QTVIT_EXTRAS=train . scripts/setup_env.sh
echo "main_job: installed in $(( $(date +%s) - t0 )) s"

# The qtvit command sets OMP_WAIT_POLICY=PASSIVE for CPU runs (idle OpenMP threads sleep instead of spinning: up to
# 20x faster on a machine shared with other jobs); the training processes below run one thread each, where the
# policy makes no difference.

# Two processes of one thread each (DDP over gloo, batch 64 each: global batch 128, as the recipe's one process
# of 128; scripts/train_launch.sh). With this set-up and fused AdamW the training images/s went up
# 1.17-1.41x (measured under two kinds of load: scripts/bench_train_speed.py, docs/training.md).
# QTVIT_PROCS=1 trains in one process with the recipe's batch 128.
. scripts/train_launch.sh
train_launcher 128

# 3. Train, then evaluate the final weights (the last checkpoint, not the best epoch: the test set picks nothing).
out="${QTVIT_OUTPUT:-runs}"
run="${QTVIT_RUN:-main-job-$(date +%Y%m%d-%H%M%S)}"
"${launch[@]}" --recipe fashion-mnist --output "$out" --name "$run" "$@"
final="$out/$run/checkpoints/$(cat "$out/$run/checkpoints/latest")"
result=$(qtvit validate --checkpoint "$final" --json)
echo "$result" > "$out/$run/test_result.json"
python - "$result" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"main_job: {r['model']} on Fashion-MNIST test ({r['images']} images): top-5 {r['top5']:.2f}%, "
      f"wall time {int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s")
print(f"test top-1: {r['top1']:.2f}%")
PY
