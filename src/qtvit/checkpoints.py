"""Checkpoints: the edge between official formats and qtvit's names, and qtvit's own safetensors format.

Reading (``load_checkpoint``):
  1. open the file: ``.safetensors`` (ours), a directory written by ``save_pretrained``, or a torch file read with
     ``torch.load(weights_only=True)`` (argparse.Namespace, which L2ViT's checkpoints carry, is allowed);
  2. unwrap: a plain state_dict is used as is; otherwise the weights come from the first present of
     ``model_ema``, ``state_dict_ema``, ``ema`` (EMA, preferred by default as in timm; ``use_ema=False`` skips them)
     then ``state_dict`` (mit-han-lab EfficientViT, AMD QT-ViT), ``model`` (L2ViT), ``module``;
     ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped;
  3. convert: ``model.checkpoint_filter_fn(state_dict, model)`` renames official keys to qtvit's;
  4. check: every key must fit, except
     - keys matching one of the model's ``new_parameter_patterns`` (regexes, e.g. QT-ViT's positional embedding),
       when the checkpoint has *no* key matching that pattern: a base-architecture checkpoint (EfficientViT into
       QT-ViT) leaves those parameters at their initial values and the report lists them as ``new``;
     - with ``adapt=True`` (what ``create_model`` does): a classifier of another size is dropped, and a first conv
       with other input channels is adapted (``adapt_input_conv``);
     anything else that does not fit raises CheckpointError naming the keys (``strict=False`` loads what fits).

Writing (``save_pretrained``): ``model.safetensors`` + ``config.json`` (architecture and constructor arguments),
each written atomically; the config is also stored in the safetensors metadata, so the file alone rebuilds.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import math
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError", "LoadReport", "adapt_input_conv", "load_checkpoint", "load_pretrained_dir", "model_config",
    "read_config", "read_state_dict", "save_pretrained",
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_PLAIN_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")
# pretrained_cfg entries that describe where the *original* weights came from; a saved model is not them
_NOT_SAVED = ("url", "file", "sha256")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did. ``new``: parameters the checkpoint lacks by design (left at init)."""

    source: str
    model: str
    state_key: str | None = None
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        where = f" (from '{self.state_key}')" if self.state_key else ""
        lines = [f"loaded {self.loaded} tensors from {self.source}{where} into {self.model}"]
        for label, keys in (("new parameters (kept at init)", self.new), ("dropped", self.dropped),
                            ("adapted", self.adapted), ("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                lines.append(f"  {label}: {_short(keys)}")
        if self.mismatched:
            lines.append(f"  shape mismatches: {_short([_shape_str(m) for m in self.mismatched])}")
        return "\n".join(lines)


def _short(keys: list[str], n: int = 8) -> str:
    more = f", ... and {len(keys) - n} more" if len(keys) > n else ""
    return f"{len(keys)} [{', '.join(keys[:n])}{more}]"


def _shape_str(m: tuple[str, tuple, tuple]) -> str:
    return f"{m[0]}: checkpoint {tuple(m[1])} vs model {tuple(m[2])}"


# ------------------------------------------------------------------------------------------------ reading


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _torch_load(path: Path) -> Any:
    safe = getattr(torch.serialization, "safe_globals", None)
    allow = safe([argparse.Namespace]) if safe else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"checkpoint {path} holds Python objects that safe loading (weights_only=True) refuses, such as "
                f"{found.group(1)}. If you trust the file, extract its weights once: "
                f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')") from e
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[-1]} The file is corrupt or "
                              "truncated (an interrupted download?), or not a checkpoint; download it again.") from e
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is corrupt or "
                              "truncated (an interrupted download?), or not a checkpoint; download it again.") from e


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        f = path / WEIGHTS_NAME
        if not f.is_file():
            raise FileNotFoundError(f"directory {path} has no {WEIGHTS_NAME}; give a checkpoint file, or a "
                                    "directory written by qtvit.checkpoints.save_pretrained")
        return f
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)  # 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap(obj: Any, use_ema: bool | None, where: str) -> tuple[dict[str, torch.Tensor], str | None]:
    if _is_state_dict(obj):
        return dict(obj), None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() "
                              "instead of the model object")
    found = [k for k in _EMA_KEYS + _PLAIN_KEYS if isinstance(obj.get(k), Mapping)]
    ema = [k for k in found if k in _EMA_KEYS]
    plain = [k for k in found if k in _PLAIN_KEYS]
    if use_ema and not ema:
        raise CheckpointError(f"{where} has no EMA weights (use_ema=True); its top-level keys are "
                              f"{list(obj)[:12]}. Pass use_ema=None to take {plain[:1] or 'the plain weights'}.")
    order = plain if use_ema is False else ema + plain
    if not order:
        raise CheckpointError(f"no weights found in {where}: its top-level keys are {list(obj)[:12]}; expected a "
                              f"state_dict or a dict with one of {list(_PLAIN_KEYS + _EMA_KEYS)}")
    key = order[0]
    sd = obj[key]
    if key == "ema" and not _is_state_dict(sd):  # mit-han-lab's trainer saves {decay: state_dict}
        sd = next((v for v in sd.values() if _is_state_dict(v)), {})
    if not _is_state_dict(sd):
        raise CheckpointError(f"'{key}' in {where} is not a state_dict of tensors")
    return dict(sd), key


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(
    checkpoint: str | os.PathLike | Mapping, use_ema: bool | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read and unwrap a checkpoint (file, save_pretrained directory, or an in-memory dict).

    Returns ``(state_dict, key)`` where key names the entry the weights came from (None for a plain state_dict).
    ``use_ema``: None prefers EMA weights when the file has them, True requires them, False ignores them.
    """
    if isinstance(checkpoint, Mapping):
        sd, key = _unwrap(checkpoint, use_ema, "the given checkpoint dict")
        return _strip_prefixes(sd), key
    path = _weights_file(Path(checkpoint))
    if _is_safetensors(path):
        try:
            obj = load_file(path)
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path}: {e}. The file is corrupt or truncated; "
                                  "save or download it again.") from e
    else:
        obj = _torch_load(path)
    sd, key = _unwrap(obj, use_ema, f"checkpoint {path}")
    return _strip_prefixes(sd), key


def read_config(checkpoint: str | os.PathLike) -> dict | None:
    """The qtvit config saved with a checkpoint (directory's config.json or safetensors metadata), or None."""
    path = Path(checkpoint)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        try:
            return json.loads((path / CONFIG_NAME).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / CONFIG_NAME} is not valid JSON: {e}") from e
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if weights.is_file() and _is_safetensors(weights):
        try:
            with safe_open(weights, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {weights}: {e}") from e
        if "qtvit_config" in meta:
            return json.loads(meta["qtvit_config"])
        if "qtvit" in meta:  # weights written by qtvit.train (metadata: model, num_classes, in_chans, model_kwargs)
            train = json.loads(meta["qtvit"])
            if train.get("model"):
                args = {k: train[k] for k in ("num_classes", "in_chans") if train.get(k)}
                return {"architecture": train["model"], "model_args": dict(train.get("model_kwargs") or {}, **args)}
    return None


# ------------------------------------------------------------------------------------------------ fitting


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt a first-conv weight (O, I, kh, kw) to ``in_chans`` inputs, as timm does.

    One channel: the sum over the input channels (a grey image gives the response to the same colour image).
    Otherwise: the channels repeated cyclically and rescaled by I / in_chans, keeping the activation scale.
    """
    i = weight.shape[1]
    if in_chans == i:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / i)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (i / in_chans)


def _names(entry: str | list | tuple | None) -> list[str]:
    if not entry:
        return []
    return [entry] if isinstance(entry, str) else list(entry)


def _adapt(model: nn.Module, sd: dict, target: dict, report: LoadReport, name: str) -> None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    for conv in _names(cfg.get("first_conv")):
        k = f"{conv}.weight"
        if k in sd and k in target and sd[k].dim() == 4 and sd[k].shape[1] != target[k].shape[1] \
                and sd[k].shape[0] == target[k].shape[0] and sd[k].shape[2:] == target[k].shape[2:]:
            _logger.info("%s: adapted %s from %d to %d input channels", name, k, sd[k].shape[1], target[k].shape[1])
            sd[k] = adapt_input_conv(target[k].shape[1], sd[k])
            report.adapted.append(k)
    for head in _names(cfg.get("classifier")):
        keys = [k for k in (f"{head}.weight", f"{head}.bias") if k in sd]
        if any(k not in target or target[k].shape != sd[k].shape for k in keys):
            old = sd[keys[0]].shape[0]
            new = target[keys[0]].shape[0] if keys[0] in target else 0
            _logger.warning("%s: dropped the checkpoint's classifier '%s' (%d classes) because the model has %d; "
                            "it keeps its random initialisation, so train it before use.", name, head, old, new)
            for k in keys:
                del sd[k]
            report.dropped.extend(keys)


def _model_name(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    strict: bool = True,
    use_ema: bool | None = None,
    adapt: bool = False,
) -> LoadReport:
    """Load a checkpoint of any supported format into ``model`` (see the module docstring for the rules).

    Args:
        model: a qtvit model (a features_only wrapper loads into its backbone).
        checkpoint: a file (.pt/.pth/.bin/.safetensors), a save_pretrained directory, or a checkpoint dict.
        strict: raise CheckpointError naming every key that does not fit; False loads the keys that fit.
        use_ema: None prefers EMA weights when present, True requires them, False ignores them.
        adapt: drop a classifier of another size and adapt the first conv to the model's input channels.
    Returns:
        a LoadReport (printable) listing loaded, new, dropped, adapted, missing, unexpected and mismatched keys.
    """
    model = getattr(model, "model", model) if getattr(model, "is_feature_wrapper", False) else model
    name = _model_name(model)
    source = "the given checkpoint dict" if isinstance(checkpoint, Mapping) else f"checkpoint {checkpoint}"
    sd, key = read_state_dict(checkpoint, use_ema)
    report = LoadReport(source=source, model=name, state_key=key)

    filter_fn: Callable | None = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = dict(filter_fn(sd, model))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{source} cannot be converted to {name}'s names: {e}") from e
    target = model.state_dict()
    if adapt:
        _adapt(model, sd, target, report, name)

    # older checkpoints may lack BN counters; they do not change any output
    missing = [k for k in target if k not in sd and k not in report.dropped and not k.endswith("num_batches_tracked")]
    for pattern in getattr(model, "new_parameter_patterns", ()) or ():
        if not any(re.search(pattern, k) for k in sd):
            report.new += [k for k in missing if re.search(pattern, k)]
    report.missing = [k for k in missing if k not in report.new]
    report.unexpected = [k for k in sd if k not in target]
    report.mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in sd.items()
                         if k in target and v.shape != target[k].shape]

    if strict and not report.ok:
        saved = None if isinstance(checkpoint, Mapping) else (read_config(checkpoint) or {}).get("architecture")
        raise CheckpointError(_mismatch_message(report, model, sd, target, saved))
    bad = {m[0] for m in report.mismatched}
    fitting = {k: v for k, v in sd.items() if k in target and k not in bad}
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    if report.new:
        _logger.info("%s: %d new parameters not in %s, kept at init: %s", name, len(report.new), source,
                     _short(report.new))
    if not report.ok:
        _logger.warning("%s: non-strict load of %s:\n%s", name, source, report)
    return report


def _mismatch_message(report: LoadReport, model: nn.Module, sd: dict, target: dict, saved_from: str | None) -> str:
    parts = []
    if report.missing:
        parts.append(f"missing {_short(report.missing)}")
    if report.unexpected:
        parts.append(f"unexpected {_short(report.unexpected)}")
    if report.mismatched:
        parts.append(f"{len(report.mismatched)} shape mismatches [{', '.join(map(_shape_str, report.mismatched[:8]))}]")
    msg = f"{report.source} does not fit {report.model}: " + ", ".join(parts) + "."
    if not set(sd) & set(target):
        msg += " No key in common: the checkpoint's format was not recognised (wrong model family?)."
    elif saved_from and saved_from != report.model:
        msg += f" It was saved from {saved_from}: create_model(checkpoint_path=...) without a name rebuilds that."
    else:
        msg += " Is it for another model or variant?"
    heads = {f"{h}.{p}" for h in _names((getattr(model, "pretrained_cfg", None) or {}).get("classifier"))
             for p in ("weight", "bias")}
    if heads & {m[0] for m in report.mismatched}:
        msg += (" The classifier differs in size: create_model(..., num_classes=N, checkpoint_path=...) drops it, "
                "or pass adapt=True.")
    return msg + " Pass strict=False to load the keys that fit and inspect the returned report."


# ------------------------------------------------------------------------------------------------ writing


def _encode(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, key) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{key}.{k}") for k, v in value.items()}
    module = getattr(value, "__module__", "") or ""
    if callable(value) and hasattr(value, "__qualname__") and module.split(".")[0] in ("torch", "qtvit"):
        return {"__type__": f"{module}:{value.__qualname__}"}  # a layer type, e.g. nn.GELU
    raise ValueError(f"cannot record the constructor argument {key}={value!r} in {CONFIG_NAME}; pass "
                     f"config={{'{key}': <a JSON value>}} to save_pretrained")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__type__"}:
            module, _, qualname = value["__type__"].partition(":")
            if module.split(".")[0] not in ("torch", "qtvit"):
                raise CheckpointError(f"refusing to import {value['__type__']!r} from a config: only torch and "
                                      "qtvit types are allowed")
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            return obj
        return {k: _decode(v) for k, v in value.items()}
    return value


def decode_model_args(config: Mapping) -> dict:
    """The constructor keyword arguments recorded in a saved config."""
    return _decode(dict(config.get("model_args", {})))


def model_config(model: nn.Module, config: Mapping | None = None) -> dict:
    """The JSON config that rebuilds ``model``: architecture, constructor arguments and its pretrained_cfg.

    Recorded by create_model on the model (``pretrained_cfg['architecture']``, ``model_args``); ``num_classes`` and
    ``in_chans`` are read from the weights, so a later ``reset_classifier`` is saved correctly. ``config``
    overrides: ``architecture`` or any constructor argument.
    """
    from . import __version__

    wrapper = model if getattr(model, "is_feature_wrapper", False) else None
    base = wrapper.model if wrapper is not None else model
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
        if k in _NOT_SAVED or k in saved_cfg or k == "architecture":
            continue
        with contextlib.suppress(ValueError, TypeError):
            saved_cfg[k] = json.loads(json.dumps(_encode(v, k)))
    out = {"architecture": arch, "model_args": {k: _encode(v, k) for k, v in args.items()}, "pretrained_cfg": saved_cfg,
           "qtvit_version": __version__}
    if wrapper is not None:
        out.update(features_only=True, out_indices=list(wrapper.out_indices))
    return out


def atomic_write(dst: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` beside ``dst``, fsync, rename: readers see the old file or the whole new one.

    On failure nothing at ``dst`` changes; a full disk raises an OSError(ENOSPC) that says so and what to do.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing {dst}: free space or change --output / the "
                                        f"output path (the previous file is intact) [{e}]") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(dst.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX); harmless where unsupported."""
    with contextlib.suppress(OSError):
        dfd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save_pretrained(model: nn.Module, path: str | os.PathLike, config: Mapping | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically; returns the directory.

    ``qtvit.create_model(checkpoint_path=path)`` or ``load_pretrained_dir(path)`` rebuild the model from them.
    Tied and non-contiguous tensors are saved as contiguous copies.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, config)
    base = model.model if getattr(model, "is_feature_wrapper", False) else model
    # clone: safetensors refuses tensors that share storage (tied weights) or are not contiguous
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in base.state_dict().items()}
    meta = {"format": "pt", "qtvit_config": json.dumps(cfg)}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=meta))
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2) + "\n"))
    return folder


def load_pretrained_dir(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Rebuild a model saved by ``save_pretrained`` from its config alone (``kwargs`` override create_model's)."""
    config = read_config(path)
    if config is None:
        raise CheckpointError(f"{path} has no qtvit config ({CONFIG_NAME} or safetensors metadata); it was not "
                              "written by save_pretrained. Use create_model(name, checkpoint_path=...) instead.")
    from .models import create_model

    if config.get("features_only"):
        kwargs.setdefault("features_only", True)
        kwargs.setdefault("out_indices", config.get("out_indices"))
    return create_model(None, checkpoint_path=path, **kwargs)
