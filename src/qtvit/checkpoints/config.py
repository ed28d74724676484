"""The model config saved with every qtvit weights file, and how it is read back.

One format: the safetensors metadata key ``CONFIG_KEY`` (and ``config.json`` beside a ``save_pretrained`` file)
holds ``{"architecture": str, "model_args": {...}, "pretrained_cfg": {...}}``. ``model_args`` are the constructor
arguments create_model used; ``pretrained_cfg`` carries the preprocessing (input_size, crop_pct, interpolation,
mean, std) and, for trained models, ``label_names``, ``dataset`` and ``recipe``.

Constructor arguments that are layer types (``act_layer=nn.GELU``) are stored as ``{"__type__": "module:name"}``
(plus ``"kwargs"`` for a ``functools.partial``). Reading them back resolves only the names of ``LAYER_TYPES``,
an explicit allow-list: a config is data, and a name outside the list (``"os:system"``) is refused, never imported.

Weights written by qtvit.train before this format (metadata key ``"qtvit"``: model, num_classes, in_chans,
img_size, crop_pct, interpolation, mean, std, class_names, dataset, recipe, model_kwargs) are read into the same
shape; EfficientViT / QT-ViT's former ``img_size`` constructor argument is read as ``pos_embed_size``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from .._version import __version__
from .files import CONFIG_NAME, CheckpointError, is_safetensors, read_json, read_metadata, resolve_weights

__all__ = ["CONFIG_KEY", "LEGACY_KEY", "LAYER_TYPES", "model_config", "read_config", "decode_model_args",
           "unwrap_model", "encode_value"]

CONFIG_KEY = "qtvit_config"
LEGACY_KEY = "qtvit"
# pretrained_cfg entries that describe where the *original* weights came from; a saved model is not them
_NOT_SAVED = ("url", "file", "sha256", "architecture")

_TORCH_LAYERS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.LeakyReLU,
    nn.ELU, nn.PReLU, nn.Softplus, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d,
    nn.RMSNorm,
)
# The layer types a saved config may name: torch's activations and norms, and qtvit's own layer classes (resolved
# only when named, so that reading a config imports nothing else).
LAYER_TYPES: frozenset[str] = frozenset(
    [f"{c.__module__}:{c.__qualname__}" for c in _TORCH_LAYERS]
    + ["qtvit.layers.drop:DropPath", "qtvit.layers.lite_mla:ChannelAffine"])
_JSON_SCALARS = (type(None), bool, int, float, str)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``), torch.compile (``._orig_mod``) and feature wrappers (``.model``)."""
    for _ in range(4):  # wrappers nest (DDP of a compiled model), but never deeply
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif getattr(model, "is_feature_wrapper", False) and isinstance(getattr(model, "model", None), nn.Module):
            model = model.model
        else:
            break
    return model


# ------------------------------------------------------------------------------------------------ writing


def _type_name(value: Any) -> str:
    return f"{getattr(value, '__module__', '')}:{getattr(value, '__qualname__', '')}"


def encode_value(value: Any, key: str) -> Any:
    """A constructor argument as JSON; layer types of the allow-list as ``{"__type__": ...}``."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [encode_value(v, key) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: encode_value(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, functools.partial) and _type_name(value.func) in LAYER_TYPES and not value.args:
        return {"__type__": _type_name(value.func), "kwargs": {k: encode_value(v, f"{key}.{k}")
                                                               for k, v in value.keywords.items()}}
    if isinstance(value, type) and _type_name(value) in LAYER_TYPES:
        return {"__type__": _type_name(value)}
    raise ValueError(f"cannot record the constructor argument {key}={value!r} in the model config: only JSON values "
                     "and the layer types of qtvit.checkpoints.LAYER_TYPES can be saved; pass "
                     f"config={{'{key}': <a JSON value>}} to save_pretrained")


def model_config(model: nn.Module, config: Mapping | None = None) -> dict:
    """The config that rebuilds ``model``: ``{"architecture", "model_args", "pretrained_cfg"}``.

    Recorded by create_model on the model (``pretrained_cfg['architecture']``, ``model_args``); ``num_classes`` and
    ``in_chans`` are read from the weights, so a later ``reset_classifier`` is saved correctly. DDP, torch.compile
    and feature wrappers are unwrapped. ``config`` overrides the architecture or any constructor argument.
    """
    wrapper = model if getattr(model, "is_feature_wrapper", False) else None
    base = unwrap_model(model)
    pcfg = dict(getattr(base, "pretrained_cfg", None) or {})
    args = dict(getattr(base, "model_args", None) or {})
    for conv in _names(pcfg.get("first_conv"))[:1]:
        with contextlib.suppress(AttributeError):
            args["in_chans"] = base.get_submodule(conv).weight.shape[1]
    for head in _names(pcfg.get("classifier"))[:1]:
        with contextlib.suppress(AttributeError):
            m = base.get_submodule(head)
            args["num_classes"] = m.weight.shape[0] if hasattr(m, "weight") else 0
    overrides = dict(config or {})
    arch = overrides.pop("architecture", None) or pcfg.get("architecture")
    if not arch:
        raise ValueError(f"cannot tell which registered architecture this {type(base).__name__} is: build it with "
                         "qtvit.create_model, or pass config={'architecture': '<name>'}")
    args.update(overrides)
    saved_cfg = {"num_classes": args["num_classes"]} if "num_classes" in args else {}
    for k, v in pcfg.items():
        if k in _NOT_SAVED or k in saved_cfg:
            continue
        with contextlib.suppress(ValueError, TypeError):  # descriptive entries that are not JSON are not needed
            saved_cfg[k] = json.loads(json.dumps(encode_value(v, k)))
    out = {"architecture": arch, "model_args": {k: encode_value(v, k) for k, v in args.items()},
           "pretrained_cfg": saved_cfg, "qtvit_version": __version__}
    if wrapper is not None:
        out.update(features_only=True, out_indices=list(wrapper.out_indices))
    return out


def _names(entry: str | list | tuple | None) -> list[str]:
    if not entry:
        return []
    return [entry] if isinstance(entry, str) else list(entry)


# ------------------------------------------------------------------------------------------------ reading


def _resolve_type(name: Any) -> Any:
    if not isinstance(name, str) or name not in LAYER_TYPES:
        raise CheckpointError(f"refusing to import {name!r} from a model config: it is not one of the layer types a "
                              "qtvit config may name (qtvit.checkpoints.LAYER_TYPES). The file was not written by "
                              "qtvit or was altered; rebuild the model with create_model(name, ...) and its weights.")
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"layer type {name!r} of a saved config no longer exists in this version of qtvit/torch; "
                              "pass that constructor argument to create_model explicitly") from e
    return obj


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__type__" in value:
            if not set(value) <= {"__type__", "kwargs"} or not isinstance(value.get("kwargs", {}), dict):
                raise CheckpointError(f"malformed layer type {value!r} in a model config: expected "
                                      "{'__type__': 'module:name'} with optional 'kwargs'")
            cls = _resolve_type(value["__type__"])
            kwargs = value.get("kwargs") or {}
            if any(isinstance(v, dict) for v in kwargs.values()):
                raise CheckpointError(f"layer type {value!r}: its kwargs must be plain JSON values")
            return functools.partial(cls, **kwargs) if kwargs else cls
        return {k: _decode(v) for k, v in value.items()}
    return value


def decode_model_args(config: Mapping) -> dict:
    """The constructor keyword arguments recorded in a saved config (layer types resolved from the allow-list)."""
    args = config.get("model_args") or {}
    if not isinstance(args, Mapping):
        raise CheckpointError(f"model_args of a saved config is a {type(args).__name__}, not a mapping")
    args = _decode(dict(args))
    arch = str(config.get("architecture") or "")
    if arch.startswith(("efficientvit_", "qtvit_")) and "img_size" in args and "pos_embed_size" not in args:
        args["pos_embed_size"] = args.pop("img_size")  # renamed: the side the positional embeddings are stored for
    return args


def _from_legacy(meta: Mapping) -> dict | None:
    """The config of weights written by qtvit.train before CONFIG_KEY existed (see the module docstring)."""
    if not meta.get("model"):
        return None
    try:
        args = dict(meta.get("model_kwargs") or {})
        args.update({k: int(meta[k]) for k in ("num_classes", "in_chans") if meta.get(k)})
        pcfg: dict[str, Any] = {}
        if meta.get("in_chans") and meta.get("img_size"):
            pcfg["input_size"] = [int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"])]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the legacy qtvit.train metadata {dict(meta)!r:.300} is malformed ({e}); the file is "
                              "damaged: pass the model name to create_model and load the weights alone") from e
    for old, new in (("crop_pct", "crop_pct"), ("interpolation", "interpolation"), ("mean", "mean"), ("std", "std"),
                     ("class_names", "label_names"), ("dataset", "dataset"), ("recipe", "recipe"),
                     ("num_classes", "num_classes")):
        if meta.get(old) is not None:
            pcfg[new] = meta[old]
    return {"architecture": meta["model"], "model_args": args, "pretrained_cfg": pcfg}


def _checked(cfg: Any, where: str) -> dict:
    problem = None
    if not isinstance(cfg, dict):
        problem = f"it is a {type(cfg).__name__}, not a JSON object"
    elif not isinstance(cfg.get("architecture"), str) or not cfg["architecture"]:
        problem = "it has no architecture name"
    elif not isinstance(cfg.get("model_args", {}), dict) or not isinstance(cfg.get("pretrained_cfg", {}), dict):
        problem = "its model_args or pretrained_cfg is not a JSON object"
    else:
        problem = _bad_count(cfg)
    if problem:
        raise CheckpointError(f"the model config of {where} is not valid: {problem}. The file is damaged or was not "
                              "written by qtvit; pass the model name to create_model and load the weights alone.")
    cfg.setdefault("model_args", {})
    cfg.setdefault("pretrained_cfg", {})
    return cfg


# The counts a config sizes tensors by: a hand-edited "3" or 1e12 must be refused here, not met as a TypeError in a
# constructor or a terabyte allocation.
_COUNTS = {"num_classes": (0, 100_000), "in_chans": (1, 1024)}


def _whole(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _bad_count(cfg: dict) -> str | None:
    """What is wrong with the config's class and channel counts and input size, or None."""
    for section in ("model_args", "pretrained_cfg"):
        for key, (lo, hi) in _COUNTS.items():
            if key in cfg.get(section, {}) and not _whole(cfg[section][key], lo, hi):
                return f"{section}.{key} is {cfg[section][key]!r:.40}, not a whole number in {lo}..{hi}"
    size = cfg.get("pretrained_cfg", {}).get("input_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 3
                                 and all(_whole(v, 1, 1 << 16) for v in size)):
        return f"pretrained_cfg.input_size is {size!r:.60}, not [channels, height, width] of whole numbers"
    return None


def _json_entry(meta: Mapping, key: str, where: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (TypeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"the '{key}' metadata of {where} is not valid JSON ({str(e)[:200]}); the file is "
                              "damaged: save or download it again") from e


def read_config(path: str | Path) -> dict | None:
    """The model config saved with a checkpoint, or None when it has none (a foreign or plain torch file).

    ``path``: anything ``resolve_weights`` accepts. A directory's ``config.json`` comes first, then the weights
    file's safetensors metadata (the current key, then the legacy training key).
    """
    p = Path(path).expanduser()
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        cfg = read_json(p / CONFIG_NAME, "model config")
        if isinstance(cfg, dict) and "architecture" not in cfg and "model" in cfg:
            cfg = _from_legacy(cfg)  # best/config.json of a run trained before CONFIG_KEY: the legacy fields
        return _checked(cfg, str(p / CONFIG_NAME))
    weights = resolve_weights(p)
    if not is_safetensors(weights):
        return None
    meta = read_metadata(weights)
    if CONFIG_KEY in meta:
        return _checked(_json_entry(meta, CONFIG_KEY, weights), str(weights))
    if LEGACY_KEY in meta:
        legacy = _json_entry(meta, LEGACY_KEY, weights)
        if not isinstance(legacy, dict):
            raise CheckpointError(f"the '{LEGACY_KEY}' metadata of {weights} is not a JSON object; the file is damaged")
        cfg = _from_legacy(legacy)
        return None if cfg is None else _checked(cfg, str(weights))
    return None
