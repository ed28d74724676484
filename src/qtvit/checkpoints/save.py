"""Writing: weights files (safetensors with the model config in their metadata) and training checkpoints.

Every file goes through ``qtvit._io.atomic_write`` (temporary name, fsync, rename). A training checkpoint is the
folder ``checkpoints/step_XXXXXXXX/`` (``model.safetensors``, ``ema.safetensors``, ``train_state.pt``), written
whole under a temporary name and renamed into place, then named in ``checkpoints/latest`` (replaced atomically).
A crash or a full disk while writing leaves the previous checkpoint whole and still named by ``latest``; older
checkpoints are removed only after the new one is in place; temporary folders left by a killed earlier write are
removed by the next save.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .._io import atomic_write, disk_full_error, fsync_dir, write_text
from .config import CONFIG_KEY, model_config, unwrap_model
from .files import EMA_NAME, STEP_DIR, TRAIN_STATE_NAME, WEIGHTS_NAME, latest_checkpoint

__all__ = ["save_weights", "save_checkpoint", "write_safetensors", "check_train_state"]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights) or are not contiguous
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, v in unwrap_model(model).state_dict().items()}


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, config: Mapping) -> Path:
    """The one weights writer: safetensors with ``config`` under ``CONFIG_KEY`` in its metadata, atomically."""
    meta = {"format": "pt", CONFIG_KEY: json.dumps(config)}
    return atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata=meta), size=_nbytes(tensors))


def save_weights(model: nn.Module, path: str | os.PathLike, *, config: Mapping | None = None) -> Path:
    """The model's weights as safetensors at ``path``, atomically, with ``model_config(model)`` in the metadata so
    that the file alone rebuilds the model (``create_model(checkpoint_path=path)``). ``config`` as model_config's."""
    return write_safetensors(_tensors(model), path, model_config(model, config))


def _state_nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_nbytes(v) for v in obj)
    return 0


_PLAIN = (type(None), bool, int, float, str)


def check_train_state(obj: Any, where: str = "train_state") -> None:
    """Raise TypeError naming the first entry of ``obj`` that ``load_train_state`` could not read back: only
    tensors, numbers, strings, bool, None and lists/tuples/dicts of those are stored (never arbitrary objects)."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_train_state(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__} ({k!r}); use str or int keys")
            check_train_state(v, f"{where}[{k!r}]")
        return
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    raise TypeError(f"{where} is a {kind}; a training checkpoint stores only tensors, numbers, strings, bool, None "
                    "and lists/tuples/dicts of those (it is read back with torch.load(weights_only=True)). Convert "
                    "it first, e.g. numpy arrays with torch.from_numpy(a) or a.tolist().")


def _remove_stale(root: Path) -> None:
    """Temporary folders of a write that was killed (``.step_XXXXXXXX.*``): never a checkpoint, only lost space."""
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(".step_"):
            shutil.rmtree(d, ignore_errors=True)


def _write_folder(folder: Path, model: nn.Module, train_state: dict, ema: nn.Module | None) -> None:
    config = model_config(model)
    write_safetensors(_tensors(model), folder / WEIGHTS_NAME, config)
    if ema is not None:
        write_safetensors(_tensors(ema), folder / EMA_NAME, config)
    atomic_write(folder / TRAIN_STATE_NAME, lambda tmp: torch.save(train_state, tmp),
                 size=_state_nbytes(train_state))


def _put_in_place(root: Path, tmp: Path, name: str) -> Path:
    final = root / name
    trash = None
    if final.exists():  # a re-save of the same step: set the old one aside until the new one is in place
        trash = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.old."))
        os.rename(final, trash / name)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(root)
    write_text(root / "latest", name + "\n")
    return final


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, train_state: dict,
                    ema: nn.Module | None = None, keep: int = 1) -> Path:
    """Write ``run_dir/checkpoints/step_<step>/`` atomically, point ``checkpoints/latest`` at it and keep the newest
    ``keep`` checkpoints. ``train_state`` holds tensors, numbers, strings, None and lists/tuples/dicts of those
    (it is read back with ``torch.load(weights_only=True)``). Returns the checkpoint folder.

    A full disk raises ``OSError(ENOSPC)`` naming the folder, its free space and the checkpoint's size; the previous
    checkpoint is left intact and still named by ``latest``.
    """
    check_train_state(train_state)  # before anything is written: a checkpoint that cannot resume is worse than none
    root = Path(run_dir).expanduser() / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    name = f"step_{int(step):08d}"
    previous = latest_checkpoint(Path(run_dir).expanduser())
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        _write_folder(tmp, model, train_state, ema)
        final = _put_in_place(root, tmp, name)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        needed = _nbytes(unwrap_model(model).state_dict()) * (2 if ema is not None else 1) + _state_nbytes(train_state)
        kept = (f"the previous checkpoint {previous.name} is intact and still the latest" if previous is not None
                else "no earlier checkpoint was changed")
        full = disk_full_error(e, root / name, needed, kept=kept)
        if full is not None:
            raise full from e
        raise
    except BaseException:  # KeyboardInterrupt: no half-written folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(d for d in root.iterdir() if d.is_dir() and STEP_DIR.fullmatch(d.name) and d.name != name)
    for d in old[:max(0, len(old) - (max(1, keep) - 1))]:
        shutil.rmtree(d, ignore_errors=True)
    return final
