"""TEMPORARY, until the wt-ckpt branch is merged: the checkpoint API of ``qtvit.checkpoints`` that training codes
against, written minimally on top of today's ``train/checkpoint.py``.

At the merge, every ``from ._ckpt_shim import X`` (train/setup.py, train/engine.py, train/evaluate.py) and
``from .train._ckpt_shim import X`` (cli.py) becomes ``from ..checkpoints import X`` / ``from .checkpoints import X``,
and this file is deleted.
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
from safetensors.torch import save_file

from .._io import atomic_write, fsync_dir
from ..checkpoints import CheckpointError, load_checkpoint, model_config, read_config
from .checkpoint import latest_checkpoint, resolve_weights

__all__ = ["CheckpointError", "CONFIG_KEY", "model_config", "save_weights", "save_checkpoint", "latest_checkpoint",
           "load_train_state", "resolve_weights", "read_config", "load_checkpoint"]

CONFIG_KEY = "qtvit_config"


def _tensors(model: nn.Module) -> dict:
    model = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def _write(model: nn.Module, path: Path, config: dict) -> None:
    save_file(_tensors(model), str(path), metadata={"format": "pt", CONFIG_KEY: json.dumps(config)})


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """safetensors with the model config (architecture, model_args, pretrained_cfg) in its metadata."""
    config = model_config(model)
    return atomic_write(path, lambda tmp: _write(model, Path(tmp), config))


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, train_state: dict,
                    ema: nn.Module | None = None, keep: int = 1) -> Path:
    """``checkpoints/step_<step>/`` written in a temporary folder and renamed, then named in ``checkpoints/latest``;
    the newest `keep` are kept."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    config = model_config(model.module if isinstance(getattr(model, "module", None), nn.Module) else model)
    try:
        _write(model, tmp / "model.safetensors", config)
        if ema is not None:
            _write(ema, tmp / "ema.safetensors", config)
        torch.save(train_state, tmp / "train_state.pt")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-save of the same step (resumed from an older checkpoint)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
        atomic_write(root / "latest", lambda t: Path(t).write_text(name + "\n"))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing {final}: free space or change --output (the "
                                        f"previous checkpoint is intact) [{e}]") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and d.name != name)
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def load_train_state(ckpt_dir: str | os.PathLike) -> dict:
    """The training state of a checkpoint folder, read with ``weights_only=True`` (no arbitrary objects)."""
    path = Path(ckpt_dir) / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no train_state.pt in {ckpt_dir}; --resume takes a run folder or a checkpoint folder")
    return torch.load(path, map_location="cpu", weights_only=True)
