#!/usr/bin/env bash
# The detection job, on a fresh machine (2 CPU cores): install what is needed, get Fashion-MNIST, train Mask R-CNN on
# QT-ViT-1 from scratch on the Fashion-MNIST scenes' instances (recipe "det-scenes", docs/detection.md), evaluate the
# final weights on the first 300 test scenes with COCOeval (box and mask AP, per-class AP), draw predictions beside
# the ground truth, and print the box and mask AP as the last line.
#
#   bash scripts/det_job.sh                               # Mask R-CNN on QT-ViT-1 (Table 4's row)
#   bash scripts/det_job.sh --backbone efficientvit_b1    # the same recipe on EfficientViT-B1 (Table 4's baseline)
#   bash scripts/det_job.sh --no-ape                      # QT-ViT-1 without its positional embedding (Table 5)
#
# Other arguments go to `qtvit train`. Environment: QTVIT_OUTPUT (default runs/), QTVIT_RUN (run name, default
# det-job-<backbone>-<time>), QTVIT_PROCS (training processes, default 2), QTVIT_RESULTS (where the validate JSON
# and the figure are copied, default results/).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

backbone=qtvit_1
ape=1
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --backbone) backbone="$2"; shift 2 ;;
        --no-ape) ape=0; shift ;;
        *) rest+=("$1"); shift ;;
    esac
done
tag="$backbone"
if [ "$ape" -eq 0 ]; then tag="${backbone}_no_ape"; fi

# qt's fused CPU kernel serves inference only: here the 350 evaluated scenes, whose 256 tokens at most per attention
# gain less from it than its build costs (30 s), so the job leaves qt on its eager path
export QTVIT_NO_CPP="${QTVIT_NO_CPP:-1}"

# 1-2. Fashion-MNIST (Debian's package) and the package with its detection (torchvision, pycocotools) and plotting
#      extras.
QTVIT_EXTRAS=detect,plot . scripts/setup_env.sh
echo "det_job: installed in $(( $(date +%s) - t0 )) s"

# The recipe's detector settings (neck, heads, sizes: model_kwargs), with the positional embedding removed for the
# no-APE row; passed whole, since a --model other than the recipe's would drop them.
kwargs=$(python - "$ape" <<'PY'
import json, sys
from qtvit.train.recipes import RECIPES
kw = dict(RECIPES["det-scenes"]["model_kwargs"])
if sys.argv[1] == "0":
    kw["pos_embed"] = False
print(" ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in kw.items()))
PY
)

# Two processes of one thread each (DDP over gloo, global batch as the recipe's; scripts/train_launch.sh): RoIAlign's
# backward and NMS run on one thread in torchvision's CPU kernels, so two processes keep both cores busy.
. scripts/train_launch.sh
train_launcher 4 --workers 1

# 3. Train, then evaluate the final weights (the last checkpoint: the test scenes pick nothing) and draw them.
out="${QTVIT_OUTPUT:-runs}"
run="${QTVIT_RUN:-det-job-${tag}-$(date +%Y%m%d-%H%M%S)}"
# shellcheck disable=SC2086  # the detector settings are KEY=VALUE words
"${launch[@]}" --recipe det-scenes --model "maskrcnn_${backbone}" --model-kwargs $kwargs --output "$out" \
    --name "$run" "${rest[@]}"
final="$out/$run/checkpoints/$(cat "$out/$run/checkpoints/latest")"
result=$(qtvit validate --checkpoint "$final" --limit 300 -b 8 --workers 1 --json)
echo "$result" > "$out/$run/test_result.json"
qtvit figure detection --checkpoint "$final" --images 6 --out "$out/$run/predictions.png"
results_dir="${QTVIT_RESULTS:-results}"
mkdir -p "$results_dir"
cp "$out/$run/test_result.json" "$results_dir/det_job_${tag}_test.json"
cp "$out/$run/predictions.png" "$results_dir/det_job_${tag}_predictions.png"
python - "$result" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
r, wall = json.loads(sys.argv[1]), int(sys.argv[2])
print(f"det_job: {r['model']} on the Fashion-MNIST scenes' test split ({r['images']} scenes), wall time "
      f"{wall // 60} min {wall % 60} s; box AP per class:")
for name, ap in r["per_class_box_ap"].items():
    if name != "background":
        print(f"  {name:<12} " + (f"{ap:6.2f}%" if ap is not None else "   n/a (absent)"))
print(f"box AP50 {r['box_ap50']:.2f}%, AP75 {r['box_ap75']:.2f}%, APs {r['box_aps']:.2f}%; "
      f"mask AP50 {r['mask_ap50']:.2f}%")
print(f"test box AP: {r['box_ap']:.2f}%, mask AP: {r['mask_ap']:.2f}%")
PY
