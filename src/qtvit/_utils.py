"""Small helpers every layer of the package shares: name suggestions, image-size parsing, strict JSON."""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import signal
import threading
from typing import Iterable, Iterator, Sequence

__all__ = ["did_you_mean", "interrupts_kept", "parse_kv", "parse_model_spec", "parse_size", "progress_bar", "to_json"]


def progress_bar(iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """`iterable` with a tqdm bar on stderr (removed when done) when `enabled` and stderr is a terminal (a log file or a
    captured stream gets no carriage-return lines), else unchanged."""
    if not enabled:
        return iterable
    import sys

    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None)


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def to_json(obj, **kwargs) -> str:
    """``json.dumps`` that writes strict JSON: NaN and infinities (an undefined mIoU, say) become null, which every
    JSON reader accepts; Python's default would write the bare ``NaN`` that strict readers refuse."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean a, b?"`` for the closest of `choices` to `name`, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n)
    return f"; did you mean {', '.join(close)}?" if close else ""


def parse_size(size: str | int | Sequence[int]) -> tuple[int, int]:
    """An image size as (H, W): ``224`` or ``"224"`` -> (224, 224); ``"512x1024"`` or ``(512, 1024)`` -> (512, 1024).

    Raises ValueError naming the value for anything else, or for a side below 1.
    """
    bad = f"bad image size {size!r}: give one side (224) or HxW (512x1024), each at least 1"
    if isinstance(size, bool):
        raise ValueError(bad)
    if isinstance(size, int):
        sides = [size]
    elif isinstance(size, str):
        try:
            sides = [int(p) for p in size.lower().replace("×", "x").split("x")]
        except ValueError:
            raise ValueError(bad) from None
    else:
        try:
            sides = [int(s) for s in size]
        except (TypeError, ValueError):
            raise ValueError(bad) from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise ValueError(bad)
    return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])


def parse_kv(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` -> (key, value): the value as JSON when it parses (numbers, lists, true/null), else the
    string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """A model with constructor arguments: ``"qtvit_seg_1_cityscapes:kernel=softmax"`` ->
    ("qtvit_seg_1_cityscapes", {"kernel": "softmax"}); more arguments follow further colons."""
    name, *pairs = spec.split(":")
    return name, dict(parse_kv(p) for p in pairs)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Run a block whose library code may catch and drop KeyboardInterrupt (torch's dynamo exporter does): a Ctrl-C
    during the block still raises KeyboardInterrupt when it ends. Only the main thread receives signals; elsewhere
    the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
