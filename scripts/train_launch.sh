# Sourced by the jobs (scripts/main_job.sh, scripts/seg_job.sh): `train_launcher GLOBAL_BATCH [qtvit train options]`
# sets the array `launch` to the training command. QTVIT_PROCS (default 2) processes of one thread each (torchrun,
# DDP over gloo), GLOBAL_BATCH / QTVIT_PROCS images each, so that the global batch stays the recipe's: on this
# machine's 2 cores, two 1-thread processes train faster than one process of two threads (the models' ops are too
# small to share well between threads; scripts/bench_train_speed.py measures it). QTVIT_PROCS=1: one process with
# the recipe's batch, and the options are not used.
train_launcher() {
    local batch="$1" procs="${QTVIT_PROCS:-2}"
    shift
    if [ "$procs" -gt 1 ]; then
        if (( batch % procs )); then
            echo "QTVIT_PROCS=$procs does not divide the recipe's global batch $batch; use a divisor of it" >&2
            return 1
        fi
        launch=(torchrun --standalone --nproc_per_node "$procs" -m qtvit train --batch-size $(( batch / procs )) "$@")
    else
        launch=(qtvit train)
    fi
}
