"""Loading weights into a model: the edge between official formats and qtvit's names.

  1. open: any path ``resolve_weights`` accepts (a file, a save_pretrained / checkpoint / run folder), read as data
     (safetensors, or ``torch.load(weights_only=True)``; see ``files.py``); for a checkpoint folder,
     ``use_ema=True`` takes its ``ema.safetensors``;
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
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .config import read_config, unwrap_model
from .files import EMA_NAME, CheckpointError, is_safetensors, read_safetensors, resolve_weights, torch_load

__all__ = ["LoadReport", "adapt_input_conv", "load_checkpoint", "read_state_dict"]

_logger = logging.getLogger("qtvit.checkpoints")

_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_PLAIN_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


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
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


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


def _weights_path(checkpoint: str | os.PathLike, use_ema: bool | None) -> Path:
    p = Path(checkpoint).expanduser()
    if use_ema and p.is_dir() and (p / EMA_NAME).is_file():  # a checkpoint folder keeps its EMA beside the model
        return p / EMA_NAME
    return resolve_weights(p)


def read_state_dict(
    checkpoint: str | os.PathLike | Mapping, use_ema: bool | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read and unwrap a checkpoint (any path ``resolve_weights`` accepts, or an in-memory dict).

    Returns ``(state_dict, key)`` where key names the entry the weights came from (None for a plain state_dict).
    ``use_ema``: None prefers EMA weights when the file has them, True requires them, False ignores them.
    """
    if isinstance(checkpoint, Mapping):
        sd, key = _unwrap(checkpoint, use_ema, "the given checkpoint dict")
        return _strip_prefixes(sd), key
    path = _weights_path(checkpoint, use_ema)
    if path.name == EMA_NAME:
        return _strip_prefixes(read_safetensors(path)), "ema"
    obj = read_safetensors(path) if is_safetensors(path) else torch_load(path)
    sd, key = _unwrap(obj, use_ema, f"checkpoint {path}")
    return _strip_prefixes(sd), key


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
            if old == new and keys[0] in target:  # same classes, another input width (e.g. aux_channels)
                why = (f"its input width differs: checkpoint {tuple(sd[keys[0]].shape)}, model "
                       f"{tuple(target[keys[0]].shape)}")
            else:
                why = f"the model has {new} classes" if new else "the model has no such classifier"
            _logger.warning("%s: dropped the checkpoint's classifier '%s' (%d classes) because %s; it keeps its "
                            "random initialisation, so train it before use.", name, head, old, why)
            for k in keys:
                del sd[k]
            report.dropped.extend(keys)


def _model_name(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike | Mapping,
    adapt: bool = True,
    strict: bool = True,
    use_ema: bool | None = None,
) -> LoadReport:
    """Load a checkpoint of any supported format into ``model`` (see the module docstring for the rules).

    Args:
        model: a qtvit model (a features_only wrapper loads into its backbone).
        path: a file (.pt/.pth/.bin/.safetensors), a save_pretrained, checkpoint or run folder (as
            ``resolve_weights``), or a checkpoint dict.
        adapt: drop a classifier of another size and adapt the first conv to the model's input channels (False:
            those are mismatches like any other).
        strict: raise CheckpointError naming every key that does not fit; False loads the keys that fit.
        use_ema: None prefers EMA weights when present, True requires them, False ignores them.
    Returns:
        a LoadReport (printable) listing loaded, new, dropped, adapted, missing, unexpected and mismatched keys.
    """
    model = unwrap_model(model)
    name = _model_name(model)
    source = "the given checkpoint dict" if isinstance(path, Mapping) else f"checkpoint {path}"
    sd, key = read_state_dict(path, use_ema)
    report = LoadReport(source=source, model=name, state_key=key)

    filter_fn: Callable | None = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = dict(filter_fn(sd, model))
        except (KeyError, ValueError, IndexError, TypeError, AttributeError, RuntimeError) as e:
            # a converter meets a damaged or foreign state_dict: the user needs the file named, not its traceback
            raise CheckpointError(f"{source} cannot be converted to {name}'s names ({type(e).__name__}: {e}); is "
                                  "it a checkpoint of this model family?") from e
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
        saved = None
        if not isinstance(path, Mapping):
            with contextlib.suppress(CheckpointError):  # the config only improves the message
                saved = (read_config(path) or {}).get("architecture")
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
