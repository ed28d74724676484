"""Weights (safetensors, self-describing) and the resumable training state, all written atomically.

A run folder holds ``checkpoints/step_XXXXXXXX/`` folders (``model.safetensors``, ``ema.safetensors``,
``train_state.pt``), each written under a temporary name, fsync'ed and renamed into place, then named in
``checkpoints/latest`` (replaced atomically). A crash or a full disk while writing leaves the previous checkpoint
whole and still named by ``latest``; older checkpoints are removed only after the new one is in place.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..checkpoints import atomic_write, fsync_dir

__all__ = [
    "CheckpointError", "atomic_write", "save_weights", "load_weights", "read_metadata", "save_checkpoint",
    "latest_checkpoint", "load_train_state", "resolve_weights",
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model asked for, or cannot be found."""


def _disk_full(path: Path, e: OSError) -> OSError:
    return OSError(errno.ENOSPC, f"disk full while writing {path}: free space or change --output "
                                 f"(the previous checkpoint is intact) [{e}]")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """The model's state dict as safetensors at `path`, atomically; `metadata` (model name, classes, ...) is kept
    in the file's header as JSON strings so the file alone says how to rebuild the model."""
    sd = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    meta = {"format": "pt", "qtvit": json.dumps(metadata or {})}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict:
    """The qtvit metadata of a safetensors file ({} for a file written by someone else)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path} is not a safetensors file ({e}); pass a .safetensors written by qtvit, a "
                              "checkpoint folder or a run folder") from e
    return json.loads(meta.get("qtvit", "{}"))


def resolve_weights(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A weights file from a .safetensors path, a checkpoint folder, or a run folder (its best, else last)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist; pass a .safetensors file or a qtvit run folder")
    candidates = [p / "model.safetensors"]
    if prefer == "best":
        candidates.insert(0, p / "best" / "model.safetensors")
    latest = latest_checkpoint(p)
    if latest is not None:
        candidates.append(latest / "model.safetensors")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no model.safetensors in {p} (nor best/ or checkpoints/); pass a weights file")


def load_weights(model: nn.Module, path: str | os.PathLike, model_name: str | None = None) -> dict:
    """Load weights into `model` strictly; a clear CheckpointError when they belong to another model or class
    count. Returns the file's qtvit metadata."""
    path = resolve_weights(path)
    meta = read_metadata(path)
    if model_name and meta.get("model") and meta["model"] != model_name:
        raise CheckpointError(f"{path} holds weights of model {meta['model']!r}, not {model_name!r}; pass "
                              f"--model {meta['model']} (or leave --model out to use the checkpoint's)")
    sd = load_file(str(path))
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        hint = ""
        if meta.get("num_classes"):
            hint = (f" It was trained for model {meta.get('model')!r} with {meta['num_classes']} classes and "
                    f"{meta.get('in_chans')} input channels; build the model with those (--model, --num-classes).")
        raise CheckpointError(
            f"{path} does not fit this model: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}, {len(mismatched)} shape mismatches {mismatched[:5]}.{hint}")
    _unwrap(model).load_state_dict(sd, strict=True)
    return meta


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or the folder itself if it is a checkpoint)."""
    p = Path(run_dir)
    if (p / "train_state.pt").is_file():
        return p
    ptr = p / "checkpoints" / "latest"
    if ptr.is_file():
        c = p / "checkpoints" / ptr.read_text().strip()
        if (c / "train_state.pt").is_file():
            return c
    return None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, train_state: dict,
                    metadata: dict, ema: nn.Module | None = None, keep: int = 1) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically, point ``checkpoints/latest`` at it, keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        sd = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
        meta = {"format": "pt", "qtvit": json.dumps(metadata)}
        save_file(sd, tmp / "model.safetensors", metadata=meta)
        if ema is not None:
            esd = {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}
            save_file(esd, tmp / "ema.safetensors", metadata=meta)
        torch.save(train_state, tmp / "train_state.pt")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        trash = None
        if final.exists():  # a re-save of the same step: set the old one aside until the new one is in place
            trash = root / f".{name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(final, trash)
        os.rename(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(root)
        atomic_write(root / "latest", lambda t: Path(t).write_text(name + "\n"))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise _disk_full(final, e) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and d.name != name)
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def load_train_state(ckpt_dir: str | os.PathLike) -> dict:
    """The training state of a checkpoint folder (optimizer, RNG states, counters, history)."""
    path = Path(ckpt_dir) / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no train_state.pt in {ckpt_dir}; --resume takes a run folder or a checkpoint folder")
    return torch.load(path, map_location="cpu", weights_only=False)
