"""The OpenMP wait policy of the ``qtvit`` command on the CPU.

By default OpenMP's idle threads spin; on a CPU shared with other jobs they then steal the cores the working
threads need: training steps measured 2.4-9.4 s with the default and 0.25-0.34 s with OMP_WAIT_POLICY=PASSIVE on
a shared 2-core machine. OpenMP reads the policy once, when torch loads it, so this must run before ``import torch``:
``qtvit/__init__.py`` calls ``set_cli_wait_policy()`` first. It acts only in a ``qtvit`` command (the console
script, ``python -m qtvit``, torchrun's ``-m qtvit``), only for a CPU run, and only when the user set no policy;
a library user's process is left alone. No torch import here.
"""
from __future__ import annotations

import os
import sys

__all__ = ["cli_args", "wants_passive", "set_cli_wait_policy"]

POLICY_ENV = "OMP_WAIT_POLICY"
_NO_COMPUTE = ("list-models", "build-ext")  # commands that run no tensor work


def cli_args(orig_argv: list[str] | None = None, argv: list[str] | None = None) -> list[str] | None:
    """The arguments of a ``qtvit`` command this process runs, or None when it runs something else."""
    orig = list(sys.orig_argv if orig_argv is None else orig_argv)
    for i, a in enumerate(orig[:-1]):
        if a == "-m" and orig[i + 1] == "qtvit":
            return orig[i + 2:]
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.basename(argv[0]) in ("qtvit", "qtvit.exe"):
        return argv[1:]
    return None


def wants_passive(args: list[str], environ=os.environ) -> bool:
    """A CPU run without a user-set policy: no ``--device cuda``, and no GPU for ``--device auto`` to pick."""
    if POLICY_ENV in environ:
        return False
    device = None
    for i, a in enumerate(args):
        if a == "--device" and i + 1 < len(args):
            device = args[i + 1]
        elif a.startswith("--device="):
            device = a.partition("=")[2]
    device = (device or "auto").lower()
    if device.startswith("cuda"):
        return False
    gpu_here = os.path.exists("/dev/nvidiactl") and environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")
    return device == "cpu" or not gpu_here


def set_cli_wait_policy() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE for a CPU run of the ``qtvit`` command, saying so once (rank 0 of torchrun)."""
    args = cli_args()
    if args is None or not wants_passive(args) or any(a in ("-h", "--help", "--version") for a in args) \
            or next((a for a in args if not a.startswith("-")), None) in _NO_COMPUTE:
        return
    os.environ[POLICY_ENV] = "PASSIVE"
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print("qtvit: OMP_WAIT_POLICY=PASSIVE for this CPU run (idle threads sleep instead of spinning, much faster "
              "on a shared CPU; set OMP_WAIT_POLICY=ACTIVE before the command to keep them spinning)",
              file=sys.stderr)
