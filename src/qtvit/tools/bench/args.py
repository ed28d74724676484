"""What the benchmark commands check before measuring anything: the device, the sizes, the models' constructor
arguments and the output paths (a benchmark that fails after minutes of measuring, on a typo, loses them)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

import torch

from ..._io import check_output
from ..._utils import parse_model_spec, parse_size

__all__ = ["size_arg", "check_device", "check_model_args", "check_outputs", "MAX_SIDE"]

MAX_SIDE = 8192  # pixels: larger sides allocate tens of GB for one image and cannot be meant


def size_arg(text: str) -> str:
    """An argparse type: a side (224) or HxW (512x1024), each in 1..MAX_SIDE; kept as text, as given."""
    try:
        h, w = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if max(h, w) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give sides of at most {MAX_SIDE} pixels")
    return text


def check_device(text: str, command: str) -> torch.device:
    """``--device`` as a torch device that exists here, or SystemExit saying what to pass."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SystemExit(f"qtvit benchmark {command}: unknown device {text!r}; use cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"qtvit benchmark {command}: device {text!r} is not benchmarked here; use cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"qtvit benchmark {command}: --device {text} but torch sees no CUDA device here; "
                         "use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"qtvit benchmark {command}: --device {text}, but there are only "
                         f"{torch.cuda.device_count()} CUDA devices")
    return device


def check_model_args(specs: Iterable[str], command: str = "models") -> None:
    """Build once every ``name:key=value`` spec, so a wrong constructor argument is one line now, not a traceback
    after the other models were measured."""
    from .paths import build_model

    for spec in specs:
        if not parse_model_spec(spec)[1]:
            continue
        try:
            build_model(spec)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"qtvit benchmark {command}: --models {spec}: {e}") from None


def check_outputs(paths: Iterable[Path | None], command: str) -> None:
    """Each output file can be written (its folder is not a file; it is not a folder); existing files are
    replaced, as benchmark results are."""
    for path in paths:
        if path is not None:
            try:
                check_output(path, overwrite=True)
            except OSError as e:
                raise SystemExit(f"qtvit benchmark {command}: {e}") from None
