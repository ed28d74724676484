"""Training images/s of a recipe (default: the main job's), old set-up against new, side by side.

    python scripts/bench_train_speed.py [--recipe fashion-mnist] [--steps 40] [--rounds 3] [--cores 2]
                                        [--old-src /path/to/old/src] [--workers N]

old: one process with --cores threads, the recipe's batch (128 for fashion-mnist) and optimizer (with --old-src
before issue 12: torch's per-tensor AdamW loop, the main job as it was). new: --cores processes of one thread each
(DDP over gloo, as scripts/main_job.sh starts them with torchrun), the recipe's batch / cores per process (the same
global batch), fused AdamW. `--old-src`: run "old" on the qtvit sources there
(e.g. a checkout of main before issue 12: `git worktree add /tmp/old <commit>`, then --old-src /tmp/old/src), so
that it also measures the library's changes, not only the set-up's. Each round runs old, then new, in fresh processes
(threads and processes are per-process settings), `--steps` training steps of the fashion-mnist recipe on the real
data; the medians of the per-round median step times are printed. On a machine shared with other jobs set
OMP_WAIT_POLICY=PASSIVE, and read the numbers as a comparison under the same load, not as the idle speed.
`--recipe seg-scenes` measures the segmentation job's set-ups the same way (global batch: the recipe's);
`--workers N` sets the new set-up's loader workers per process (default: the recipe's).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time


def worker(args) -> None:
    """Median seconds per global step of this process group (printed by rank 0 as `step_s <value>`)."""
    from qtvit.train.distributed import cleanup_distributed, setup_distributed
    from qtvit.train.engine import train_step
    from qtvit.train.recipes import make_config
    from qtvit.train.setup import setup_run
    from qtvit.train.state import RunState
    d = setup_distributed("cpu")
    fused = {"fused_optimizer": True} if args.fused else {}  # an older qtvit has no such option
    workers = {"workers": args.workers} if args.workers is not None else {}
    cfg = make_config(args.recipe, threads=args.threads, batch_size=args.batch_size, output="/tmp/qtvit-bench",
                      progress=False, **fused, **workers)
    run, state = setup_run(cfg, d), RunState()
    batches = itertools.chain.from_iterable(run.train_batches.iterate(e) for e in itertools.count())
    times = []
    for _ in range(args.steps + 5):  # the first 5 steps warm the allocator and oneDNN's kernel cache up
        t0 = time.perf_counter()
        train_step(run, state, *next(batches))  # the training loop's own step
        times.append(time.perf_counter() - t0)
    if d.is_main:
        print(f"step_s {statistics.median(times[5:])}", flush=True)
    cleanup_distributed()


def _run(recipe: str, procs: int, threads: int, batch: int, fused: bool, workers: int | None, steps: int,
         src: str | None) -> float:
    me = [os.path.abspath(__file__), "--worker", "--recipe", recipe, "--threads", str(threads), "--batch-size",
          str(batch), "--steps", str(steps)] + (["--fused"] if fused else []) + (
        ["--workers", str(workers)] if workers is not None else [])
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + me
           if procs > 1 else [sys.executable] + me)
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("step_s ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return float(lines[-1].split()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fashion-mnist")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--old-src", default=None, help="qtvit sources for the old set-up (default: this one's)")
    p.add_argument("--workers", type=int, default=None, help="the new set-up's loader workers per process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from qtvit.train.recipes import make_config
    batch = make_config(args.recipe).batch_size
    if batch % args.cores:
        p.error(f"--cores {args.cores} does not divide the recipe's global batch {batch}")
    setups = {"old (1 process x %d threads, the recipe's optimizer)" % args.cores:
              (args.recipe, 1, args.cores, batch, False, None, args.old_src),
              "new (%d processes x 1 thread, fused AdamW)" % args.cores:
              (args.recipe, args.cores, 1, batch // args.cores, True, args.workers, None)}
    times: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(args.rounds):
        for name, setup in setups.items():
            times[name].append(_run(*setup[:6], args.steps, setup[6]))
            print(f"round {r + 1}: {name}: {batch / times[name][-1]:.1f} images/s", flush=True)
    speeds = {k: batch / statistics.median(v) for k, v in times.items()}
    (old, a), (new, b) = speeds.items()
    print(f"\ntraining images/s (median of {args.rounds} rounds x {args.steps} steps, global batch {batch}):\n"
          f"  {old}: {a:.1f}\n  {new}: {b:.1f}\n  speed-up: {b / a:.2f}x")


if __name__ == "__main__":
    main()
