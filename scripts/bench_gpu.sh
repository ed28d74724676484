#!/usr/bin/env bash
# The GPU benchmarks (issue 12, point 5) in one call on a CUDA machine: the CUDA tests, then the kernel and model
# benchmarks in float16 and bfloat16, eager, compiled and (models) CUDA graphs. Each step has its own time limit and
# writes its CSV and log to $RESULTS (default results/gpu), so a step that runs out of time costs only itself; no
# step starts after DEADLINE seconds (default 480). With ARCHIVE=path.tgz, everything is also packed there after
# each step (for machines that hand back a few files only). STEPS="name ..." runs only the steps named.
#   bash scripts/bench_gpu.sh              # ~8 min on one H100
# Needs torch with CUDA; the peer library for --peer (pip install taylor-series-linear-attention) is optional.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${RESULTS:-results/gpu}
DEADLINE=${DEADLINE:-480}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() {  # step SECONDS NAME COMMAND...: run with a time limit (and within DEADLINE), log to $OUT/NAME.log
    local limit=$1 name=$2 left=$((DEADLINE - SECONDS)); shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
    if [ "$left" -lt 20 ]; then echo "== $name: skipped, past the deadline"; return; fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "   rc $? in $((SECONDS - t0)) s"
    [ -n "${ARCHIVE:-}" ] && tar czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/device.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    >>"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

KERNEL_NS="1024 4096 16384 65536"
step 150 test_cuda $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
for dt in float16 bfloat16; do
    step 90 "kernels_cuda_$dt" $PY -m qtvit benchmark kernels --device cuda --dtype $dt --ns $KERNEL_NS \
        --head-dims 16 32 --heads 8 --modes fwd fwd+bwd --repeats 10 --budget 1 --out "$OUT/kernels_cuda_$dt.csv"
done
for dt in float16 bfloat16; do
    step 120 "models_cuda_$dt" $PY -m qtvit benchmark models --device cuda --dtype $dt \
        --models qtvit_1 efficientvit_b1 --sizes 224 512 1024 2048 --batch-sizes 1 32 \
        --modes eager fused cudagraph --repeats 20 --budget 2 --max-call 10 --out "$OUT/models_cuda_$dt.csv"
done
step 90 seg_cuda_bfloat16 $PY -m qtvit benchmark models --device cuda --dtype bfloat16 \
    --models efficientvit_seg_b1_cityscapes qtvit_seg_1_cityscapes qtvit_seg_1_cityscapes:kernel=softmax \
    --sizes 512 1024 1024x2048 --batch-sizes 1 8 --modes eager fused cudagraph --repeats 10 --budget 2 \
    --max-call 10 --out "$OUT/seg_cuda_bfloat16.csv"
step 60 kernels_cuda_peer $PY -m qtvit benchmark kernels --device cuda --dtype float32 --peer --compile \
    --kernels qt relu taylor2 --ns 4096 16384 --head-dims 16 --heads 8 --modes fwd --repeats 20 \
    --out "$OUT/kernels_cuda_float32_peer.csv"
step 140 models_cuda_compile $PY -m qtvit benchmark models --device cuda --dtype bfloat16 \
    --models qtvit_1 efficientvit_b1 --sizes 224 1024 --batch-sizes 1 --modes cudagraph compile \
    --compile-sizes 224 1024 --repeats 20 --out "$OUT/models_cuda_bfloat16_compile.csv"
step 150 kernels_cuda_compile $PY -m qtvit benchmark kernels --device cuda --dtype bfloat16 --compile \
    --kernels softmax relu qt taylor2 --ns 4096 16384 65536 --head-dims 16 --heads 8 --modes fwd fwd+bwd \
    --repeats 10 --budget 1 --out "$OUT/kernels_cuda_bfloat16_compile.csv"
tail -n 3 "$OUT"/*.log
