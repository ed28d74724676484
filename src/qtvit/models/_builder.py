"""Building models: ``build_model_with_cfg`` for the families' registered constructors and ``create_model`` by name.

The one place that sets a model's ``pretrained_cfg``, loads weights (through ``qtvit.checkpoints.load_checkpoint``,
which maps official keys with the family's ``checkpoint_filter_fn``) and wraps a model for ``features_only``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch.nn as nn

from .. import checkpoints
from ._features import FeatureListNet
from ._pretrained import pretrained_file
from ._registry import model_entrypoint

__all__ = ["build_model_with_cfg", "create_model", "load_pretrained", "pretrained_file", "set_pretrained_cfg"]


def set_pretrained_cfg(model: nn.Module, cfg: dict[str, Any], architecture: str) -> dict[str, Any]:
    """Give ``model`` its own copy of ``cfg`` as ``pretrained_cfg`` (and timm's older alias ``default_cfg``),
    recording ``architecture``. Returns the copy."""
    cfg = dict(cfg, architecture=architecture)
    model.pretrained_cfg = cfg
    if not isinstance(getattr(type(model), "default_cfg", None), property):
        model.default_cfg = cfg
    return cfg


def load_pretrained(model: nn.Module, checkpoint_path: str | os.PathLike | None = None) -> nn.Module:
    """Load ``checkpoint_path``, or the official weights of ``model.pretrained_cfg`` (downloaded once, cached),
    into ``model`` with the checks and adaptations of ``checkpoints.load_checkpoint``; sets ``model.load_report``."""
    cfg = model.pretrained_cfg
    path = checkpoint_path if checkpoint_path is not None else pretrained_file(cfg["architecture"], cfg)
    model.load_report = checkpoints.load_checkpoint(model, path, adapt=True)
    return model


def build_model_with_cfg(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    *,
    pretrained_cfg: dict[str, Any],
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``model_cls(**kwargs)`` with ``pretrained_cfg`` set, the official weights loaded if ``pretrained``, and
    wrapped as a ``FeatureListNet`` if ``features_only``: what every registered constructor returns.

    Weights go through ``checkpoints.load_checkpoint``, which renames official keys with ``model_cls``'s
    ``checkpoint_filter_fn`` and adapts the classifier and the first conv to ``num_classes``/``in_chans``.
    """
    model = model_cls(**kwargs)
    set_pretrained_cfg(model, pretrained_cfg, variant)
    if pretrained:
        load_pretrained(model)
    return FeatureListNet(model, out_indices) if features_only else model


def create_model(
    name: str | None = None,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    kernel=None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, e.g. ``create_model("qtvit_1", pretrained=True, num_classes=10)``.

    Args:
        name: a name from ``qtvit.list_models()``; None takes it from ``checkpoint_path``'s saved config.
        pretrained: load the official weights (downloaded once and cached, see ``qtvit.hub``).
        checkpoint_path: load this checkpoint instead (any format ``qtvit.checkpoints.load_checkpoint`` reads);
            a file or directory written by ``save_pretrained`` also supplies the constructor arguments.
        num_classes: classifier size (default: the saved config's, else the constructor's, usually 1000). A
            checkpoint classifier of another size is dropped with a warning; the new head starts from its init.
        in_chans: input channels (default: as num_classes, usually 3); the checkpoint's first conv is adapted
            (summed for 1 channel, repeated and rescaled otherwise).
        features_only: return a module whose forward gives the list of per-stage maps, with ``.feature_info``.
        out_indices: which stages for features_only (None = all, int k = the last k, or a sequence).
        kernel: attention kernel name for the model's attention layers; passed on only when given.
        kwargs: other constructor arguments (they override the saved config's).
    Returns:
        the model, with ``pretrained_cfg['architecture']``, ``model_args`` and, after loading, ``load_report``.
    """
    saved = checkpoints.read_config(checkpoint_path) if checkpoint_path is not None else None
    if name is None:
        if saved is None:
            raise ValueError("create_model needs a model name (see qtvit.list_models()), or checkpoint_path= a "
                             "directory or .safetensors file written by qtvit.save_pretrained")
        name = saved["architecture"]
    entrypoint = model_entrypoint(name)

    args = checkpoints.decode_model_args(saved) if saved and saved.get("architecture") == name else {}
    args.update(kwargs)
    given = dict(num_classes=num_classes, in_chans=in_chans, kernel=kernel)
    args.update({k: v for k, v in given.items() if v is not None})
    # weights are loaded here, not by the constructor, so every family gets the same checks and messages
    model = entrypoint(pretrained=False, **args)

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if saved and saved.get("architecture") == name:
        cfg.update(saved.get("pretrained_cfg", {}))
    set_pretrained_cfg(model, cfg, name)
    model.model_args = args

    if checkpoint_path is not None or pretrained:
        load_pretrained(model, checkpoint_path)
    if features_only:
        return FeatureListNet(model, out_indices)
    return model
