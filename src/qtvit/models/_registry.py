"""Model registry: named constructors, as in timm, so `create_model("qtvit_1")` builds a configured model."""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

from .._utils import did_you_mean

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its function name."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice")
    _model_entrypoints[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted (e.g. ``list_models("qtvit_*")``)."""
    return sorted(n for n in _model_entrypoints if fnmatch.fnmatch(n, pattern))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _model_entrypoints)} (qtvit.list_models() "
                         f"lists all {len(_model_entrypoints)})")
    return _model_entrypoints[name]
