"""Finding and reading checkpoint files, as data only: nothing a file holds is ever imported or called.

Paths a user may give (``resolve_weights``): a weights file (.safetensors, .pt, .pth, .bin), a ``save_pretrained``
directory (``model.safetensors`` + ``config.json``), a checkpoint step folder (``checkpoints/step_XXXXXXXX/``) or a
run folder (its ``best/``, then its latest checkpoint).

Torch files are read with ``torch.load(weights_only=True)``: its unpickler builds tensors and plain containers and
refuses every other global. Weights files may also hold ``argparse.Namespace`` (L2ViT's checkpoints carry one);
training states written before the RNG state was stored as tensors may hold numpy arrays, so those are read with
numpy's array reconstruction allowed, and nothing else.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

__all__ = [
    "CheckpointError", "WEIGHTS_NAME", "EMA_NAME", "CONFIG_NAME", "TRAIN_STATE_NAME", "resolve_weights",
    "latest_checkpoint", "is_safetensors", "read_safetensors", "read_metadata", "torch_load", "load_train_state",
]

WEIGHTS_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
CONFIG_NAME = "config.json"
TRAIN_STATE_NAME = "train_state.pt"
STEP_DIR = re.compile(r"step_\d{8,}")

# numpy's pickling of arrays and scalars (np.random.get_state() holds a uint32 array): the 1.x and 2.x names
_NUMPY_GLOBALS = [
    (np.ndarray, "numpy.ndarray"),
    (np.dtype, "numpy.dtype"),
    (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
] if hasattr(np, "_core") else [
    (np.ndarray, "numpy.ndarray"),
    (np.dtype, "numpy.dtype"),
    (np.core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np.core.multiarray.scalar, "numpy.core.multiarray.scalar"),
]
# numpy >= 1.25 pickles a dtype with its class (numpy.dtypes.UInt32DType): the plain numeric ones, not object/void
_NUMPY_GLOBALS += [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None))
                   if n.endswith("DType") and n not in ("ObjectDType", "VoidDType", "StringDType")]


class CheckpointError(ValueError):
    """A checkpoint cannot be found or read, or does not fit the model asked for."""


def _corrupt(path: Path, e: BaseException, what: str = "checkpoint") -> CheckpointError:
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return CheckpointError(f"cannot read {what} {path}: {reason[:300]}. The file is corrupt or truncated (an "
                           "interrupted download or copy?), or not a checkpoint; save or download it again.")


# ------------------------------------------------------------------------------------------------ where


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or the folder itself if it is a checkpoint).

    ``checkpoints/latest`` names it; when that pointer is missing or stale (a crash between the rename and the
    pointer's update), the newest ``step_*`` folder holding a training state is taken.
    """
    p = Path(run_dir).expanduser()
    if (p / TRAIN_STATE_NAME).is_file():
        return p
    root = p / "checkpoints"
    if not root.is_dir():
        return None
    ptr = root / "latest"
    if ptr.is_file():
        name = ptr.read_text(errors="replace").strip()
        if STEP_DIR.fullmatch(name) and (root / name / TRAIN_STATE_NAME).is_file():  # a name, never a path
            return root / name
    done = sorted(d for d in root.iterdir() if STEP_DIR.fullmatch(d.name) and (d / TRAIN_STATE_NAME).is_file())
    return done[-1] if done else None


def resolve_weights(path: str | Path, prefer: str = "best") -> Path:
    """The weights file meant by ``path``: a file itself; a save_pretrained, best/ or checkpoint folder's
    ``model.safetensors``; a run folder's ``best/`` (``prefer="best"``) or latest checkpoint (``"latest"``) first,
    then the other. Raises FileNotFoundError saying what was looked for."""
    if prefer not in ("best", "latest"):
        raise ValueError(f"prefer={prefer!r}: use 'best' (the run's best weights first) or 'latest'")
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist; pass a weights file (.safetensors, .pt, .pth), a "
                                "save_pretrained directory, a checkpoint folder or a run folder")
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {p} is not a regular file or a folder")
    best = p / "best" / WEIGHTS_NAME
    latest = latest_checkpoint(p)
    last = latest / WEIGHTS_NAME if latest is not None else None
    order = [p / WEIGHTS_NAME] + ([best, last] if prefer == "best" else [last, best])
    for c in order:
        if c is not None and c.is_file():
            return c
    raise FileNotFoundError(f"directory {p} has no {WEIGHTS_NAME} (nor best/{WEIGHTS_NAME}, nor a checkpoint under "
                            "checkpoints/); give a checkpoint file, or a directory written by qtvit.save_pretrained "
                            "or qtvit train")


# ------------------------------------------------------------------------------------------------ reading


def is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)  # 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type (and OverflowError/ValueError on bad headers)
        raise CheckpointError(f"cannot read safetensors file {path}: {str(e)[:300]}. The file is corrupt or "
                              "truncated; save or download it again.") from e


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {str(e)[:300]}. The file is corrupt or "
                              "truncated; save or download it again.") from e
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"the metadata of {path} is not a mapping of strings; save the file again")
    return dict(meta)


def torch_load(path: Path, allow: list | None = None, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of ``path`` with ``allow`` added to the safe globals; a CheckpointError
    for anything it refuses or cannot read."""
    allow = [argparse.Namespace] if allow is None else allow
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)|but got <class '([^']+)'>", str(e), re.I)
        if found:
            name = found.group(1) or found.group(2)
            raise CheckpointError(
                f"{what} {path} holds Python objects that safe loading (weights_only=True) refuses, such as "
                f"{name}; qtvit never runs code from a file. If you trust the file, extract its weights "
                "once: torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')") from e
        raise _corrupt(path, e, what) from e
    except Exception as e:  # zip, EOF, struct, unicode errors of a damaged file: all mean the same to the user
        raise _corrupt(path, e, what) from e


def load_train_state(ckpt_dir: str | Path) -> dict:
    """The training state of a checkpoint folder (or a run folder's latest): optimizer, RNG states, counters.

    Read with ``torch.load(weights_only=True)``; numpy arrays (the RNG state of runs saved before it was stored as
    tensors) are the only objects allowed beyond tensors and plain containers.
    """
    p = Path(ckpt_dir).expanduser()
    ckpt = latest_checkpoint(p) if p.is_dir() else None
    path = (ckpt or p) / TRAIN_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {TRAIN_STATE_NAME} in {p}; --resume takes a run folder or a checkpoint folder "
                                "(checkpoints/step_XXXXXXXX)")
    state = torch_load(path, allow=_NUMPY_GLOBALS, what="training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"training state {path} holds a {type(state).__name__}, not a dict; the file is not a "
                              "qtvit training state (or is damaged): resume from another checkpoint")
    return state


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({str(e)[:200]}); the file is damaged: save the "
                              "model again") from e
