"""Model registry: named constructors, as in timm, so `create_model("qtvit_1")` builds a configured model."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Mapping

import torch.nn as nn

from .._utils import did_you_mean

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_with_weights: set[str] = set()  # models whose default pretrained_cfg names official weights (a url or a file)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its function name (a decorator): ``create_model(name)``, ``qtvit train
    --model name`` and saved weights of it then find it. A name taken is an error (``unregister_model`` frees it)."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice; unregister_model({name!r}) first to replace it")
    _model_entrypoints[name] = fn
    return fn


def unregister_model(name: str | Callable[..., nn.Module]) -> None:
    """Remove a model registered by ``register_model`` (by name or constructor); a name not registered is an
    error."""
    name = name if isinstance(name, str) else name.__name__
    if name not in _model_entrypoints:
        raise ValueError(f"model {name!r} is not registered{did_you_mean(name, _model_entrypoints)}")
    del _model_entrypoints[name]
    _with_weights.discard(name)


def register_pretrained(cfgs: Mapping[str, Mapping[str, Any]]) -> None:
    """Record which of these models' default pretrained_cfgs name official weights, for list_models(pretrained=True)."""
    _with_weights.update(name for name, cfg in cfgs.items() if cfg.get("url") or cfg.get("file"))


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern, sorted (e.g. ``list_models("qtvit_*")``); with
    ``pretrained=True`` only those with official weights (``create_model(name, pretrained=True)``)."""
    return sorted(n for n in _model_entrypoints
                  if fnmatch.fnmatch(n, pattern) and (not pretrained or n in _with_weights))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _model_entrypoints)} (qtvit.list_models() "
                         f"lists all {len(_model_entrypoints)})")
    return _model_entrypoints[name]
