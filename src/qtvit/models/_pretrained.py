"""Pretrained weights next to the models: saving a model as a directory, and fetching the official weights.

``save_pretrained(model, dir)`` writes ``model.safetensors`` (the config in its metadata) and ``config.json``
through the checkpoint writer; ``create_model(checkpoint_path=dir)`` (or the .safetensors file alone) rebuilds it.

``pretrained_file`` downloads a model's official weights once through ``qtvit.hub`` and checks that the cached
file is a readable checkpoint: a corrupt or truncated cache entry is deleted and downloaded again (once).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch.nn as nn

from .. import hub
from .._io import write_text
from ..checkpoints import CONFIG_NAME, WEIGHTS_NAME, model_config, read_state_dict, save_weights

__all__ = ["save_pretrained", "pretrained_file"]


def save_pretrained(model: nn.Module, path: str | os.PathLike, config: Mapping | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically; returns the directory.

    ``qtvit.create_model(checkpoint_path=path)`` rebuilds the model from them. Tied and non-contiguous tensors are
    saved as contiguous copies. ``config`` overrides the architecture or constructor arguments recorded.
    """
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, config)
    save_weights(model, folder / WEIGHTS_NAME, config=config)
    write_text(folder / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
    return folder


def _readable(path: Path) -> None:
    read_state_dict(path)  # raises CheckpointError (a ValueError) for a damaged file


def pretrained_file(name: str, cfg: dict, progress: bool = True) -> str:
    """The local path of a model's pretrained weights: downloaded (cached, verified) from ``cfg['url']``.

    Weights without a direct url (QT-ViT's are on Google Drive) are taken from the cache when a user put them
    there (``cfg['file']`` in ``$QTVIT_CACHE`` or ``~/.cache/qtvit``); otherwise the error says where to get them.
    """
    url, file = cfg.get("url"), cfg.get("file")
    if url:
        return str(hub.download(hub.resolve_url(url), sha256=cfg.get("sha256"), progress=progress,
                                file_name=file or None, check=_readable))
    cached = hub.get_cache_dir() / file if file else None
    if cached is not None and cached.is_file():
        return str(cached)
    own = (f"create_model({name!r}, checkpoint_path=<file>) (--checkpoint, or --initial-checkpoint to fine-tune, on "
           "the command line), or use pretrained=False")
    if cached is None:  # neither a url nor a file: no official weights exist
        raise ValueError(f"{name} has no downloadable pretrained weights: none were released for it (`qtvit "
                         f"list-models --pretrained` lists the models that have them). Pass your own with {own}.")
    origin = cfg.get("origin_url")
    where = f"; they are published at {origin}" if origin else ""
    raise ValueError(f"{name} has no downloadable pretrained weights{where}: download the file by hand and put the "
                     f"file at {cached}, or pass {own}.")
