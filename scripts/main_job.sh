#!/usr/bin/env bash
# The main job, on a fresh machine (2 CPU cores are enough): install what is needed, get Fashion-MNIST, train a
# small QT-ViT (recipe "fashion-mnist"), evaluate its final weights on the 10 000 test images and print the
# test top-1 as the last line. Extra arguments go to `qtvit train` (e.g. --epochs 3).
# Environment: QTVIT_OUTPUT (default runs/), QTVIT_RUN (run name, default main-job-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

# 1. Fashion-MNIST from Debian's package when it is not there yet (qtvit falls back to a download otherwise).
if [ ! -r /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; } \
        >/dev/null || echo "main_job: could not install dataset-fashion-mnist with apt-get; qtvit will try to download" \
                           "Fashion-MNIST" >&2
fi

# 2. The package with its training extra (kornia, torchmetrics), torch pinned to the CPU build.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[train]"
echo "main_job: installed in $(( $(date +%s) - t0 )) s"

# On a machine shared with other jobs, `export OMP_WAIT_POLICY=PASSIVE` keeps idle OpenMP threads from spinning
# (up to 20x faster there); on an idle machine the default is faster (0.18 against 0.25 s a step, measured).

# 3. Train, then evaluate the final weights (the last checkpoint, not the best epoch: the test set picks nothing).
out="${QTVIT_OUTPUT:-runs}"
run="${QTVIT_RUN:-main-job-$(date +%Y%m%d-%H%M%S)}"
qtvit train --recipe fashion-mnist --output "$out" --name "$run" "$@"
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
