"""Options declared once: a dataclass field made with ``option(...)`` carries its help, its bound or choices and its
command-line form; the argparse flags (``add_options``), the library's checks (``check_options``) and the Markdown
table of the docs (``options_table``) are all read from it.

Also the checked number types every command's parser shares (``bounded``, ``positive_int``, ``fraction_in``,
``image_size``, ``worker_count``, ``device_arg``). No torch here: ``import qtvit.cli`` stays cheap.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from typing import Callable, NamedTuple

from ._utils import parse_kv

__all__ = ["Bound", "OptionError", "option", "flag", "check_field", "check_options", "add_options", "argparse_kwargs",
           "options_table", "replace_table", "bounded", "positive_int", "positive_float", "fraction_in", "image_size",
           "worker_count", "device_arg", "kv_arg", "AMP_MODES", "MAX_IMG_SIZE", "MAX_WORKERS", "IMG_SIZE", "WORKERS",
           "CPU_HINT"]

AMP_MODES = ("none", "bf16", "fp16")  # --amp of train and validate; tasks.inputs.autocast reads it
# The largest image side accepted anywhere (data size, positional-embedding size): far above any real use, and
# small enough that a typo (100000) is refused instead of trying to allocate hundreds of gigabytes.
MAX_IMG_SIZE = 4096
# Loader workers and torch threads beyond the machine's CPUs only slow it down; a huge number forks until killed.
# At least 4, the default, so the defaults hold on any machine.
MAX_WORKERS = max(4, os.cpu_count() or 1)
CPU_HINT = f" (this machine has {os.cpu_count()} CPUs)"


class Bound(NamedTuple):
    """The values an option accepts: lo..hi, each end open or closed, None for no limit."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        # NaN and infinities are never meant: an infinite learning rate trains NaN weights without an error
        return math.isfinite(v) and ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def describe(self) -> str:
        def num(v: float) -> str:  # whole numbers in full (a seed's 4294967295, not 4.29497e+09)
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {num(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


IMG_SIZE, WORKERS = Bound(8, MAX_IMG_SIZE), Bound(0, MAX_WORKERS)


# ----------------------------------------------------------------------------------------------- declaring
def option(default=dataclasses.MISSING, help: str = "", *, bound: Bound | None = None, choices: tuple = (),
           hint: str = "", allow_none: bool = False, flags: tuple[str, ...] = (), metavar=None,
           parse: Callable | None = None, check: Callable | None = None, accepts: str = "",
           factory: Callable | None = None, cli: bool = True):
    """A dataclass field with everything the parser, the checks and the docs need.

    bound/choices: the values accepted (numbers: element-wise for pairs); hint: said after a bound when a value is
    refused; allow_none: the flag also takes the word "none"; flags: more names for the flag (``-b``); parse: the
    argparse type of a string option; check: a callable raising ValueError(problem) for a bad value; accepts: the
    docs table's words for the values when the bound depends on the machine; cli: False for a field with no flag."""
    meta = dict(help=help, bound=bound, choices=tuple(choices), hint=hint, allow_none=allow_none, flags=tuple(flags),
                metavar=metavar, parse=parse, check=check, accepts=accepts, cli=cli)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _either(words, conjunction: str = "or") -> str:
    words = [str(w) for w in words]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


class OptionError(ValueError):
    """A bad option value. Its message names the fields (``lr must be ...``); ``as_flags()`` says the same with the
    command line's flags (``--lr must be ...``)."""

    def __init__(self, fields: str | tuple[str, ...], problem: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.problem = problem
        super().__init__(f"{_either(self.fields, 'and')} {problem}")

    def as_flags(self) -> str:
        return f"{_either((flag(f) for f in self.fields), 'and')} {self.problem}"


# ----------------------------------------------------------------------------------------------- checking
def check_field(f: dataclasses.Field, value) -> None:
    """An OptionError naming `f` when `value` is outside its declaration (None, an unset option, always passes)."""
    meta = f.metadata
    if value is None or not meta:
        return
    if meta["bound"] is not None:
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise OptionError(f.name, f"must be a number, got {value!r}")
            if not meta["bound"].holds(v):
                shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else value
                raise OptionError(f.name, f"must be finite and {meta['bound'].describe()}, got {shown}{meta['hint']}")
    if meta["choices"] and value not in meta["choices"]:
        raise OptionError(f.name, f"must be {_either(meta['choices'])}, got {value!r}")
    if meta["check"] is not None:
        try:
            meta["check"](value)
        except ValueError as e:
            raise OptionError(f.name, f"{value!r} {e}") from None


def check_options(cfg) -> None:
    """Every declared field of the dataclass instance `cfg` within its declaration."""
    for f in dataclasses.fields(cfg):
        check_field(f, getattr(cfg, f.name))


# ----------------------------------------------------------------------------------------------- parsing
def bounded(kind: type, bound: Bound | None, hint: str = "", allow_none: bool = False):
    """An argparse type: `kind` (int or float) within `bound`; the word "none" too when `allow_none`."""
    def parse(text: str):
        if allow_none and text.strip().lower() in ("none", "null"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if bound is not None and not bound.holds(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a value {bound.describe()}{hint}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive_int(text: str) -> int:
    return bounded(int, Bound(1))(text)


def positive_float(text: str) -> float:
    return bounded(float, Bound(0, lo_open=True))(text)


def fraction_in(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False, allow_none: bool = False):
    """A float in (lo, hi] by default, e.g. fraction_in(0, 1) for a crop ratio."""
    return bounded(float, Bound(lo, hi, lo_open, hi_open), allow_none=allow_none)


image_size = bounded(int, IMG_SIZE, " (pixels; sizes beyond that cannot be meant)")
image_size.__name__ = "image_size"
worker_count = bounded(int, WORKERS, CPU_HINT)
worker_count.__name__ = "worker_count"


def device_arg(text: str) -> str:
    """auto, cpu, cuda or cuda:N (whether CUDA is there is checked when the command runs)."""
    kind, _, index = text.strip().lower().partition(":")
    if text.strip().lower() in ("auto", "cpu") or (kind == "cuda" and (not index or index.isdigit())):
        return text.strip().lower()
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N (N a GPU index)")


def kv_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (a model's constructor argument)."""
    try:
        return parse_kv(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _checked(check: Callable, name: str):
    """An argparse type from a declaration's `check` callable (its ValueError is the usage error)."""
    def parse(text: str):
        try:
            check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r} {e}") from None
        return text
    parse.__name__ = name
    return parse


def _number_kind(f: dataclasses.Field) -> type:
    """int or float from the field's annotation (``int | None``, ``tuple[int, int]``...; a string under
    ``from __future__ import annotations``, a type otherwise)."""
    text = f.type if isinstance(f.type, str) else f.type.__name__ if isinstance(f.type, type) else repr(f.type)
    return int if re.match(r"(tuple\[)?int\b", text) else float


def _help(text: str, default) -> str:
    if "default" in text:
        return text
    if isinstance(default, bool):
        return f"{text} (default: {'on' if default else 'off'})"
    return f"{text} (default: {default})"


def argparse_kwargs(f: dataclasses.Field, default) -> dict:
    """The add_argument keywords of one declared field (every default None: "left out" keeps the recipe's)."""
    meta = f.metadata
    kw = dict(dest=f.name, default=None, help=_help(meta["help"], default))
    if isinstance(default, bool):
        kw["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, tuple):  # pairs of numbers
        kw.update(nargs=2, type=bounded(_number_kind(f), meta["bound"]), metavar=("A", "B"))
    elif isinstance(default, dict):
        kw.update(nargs="*", type=kv_arg, metavar="KEY=VALUE")
    elif meta["bound"] is not None:
        kw["type"] = bounded(_number_kind(f), meta["bound"], meta["hint"], meta["allow_none"])
    elif meta["parse"] is not None or meta["check"] is not None:
        kw["type"] = meta["parse"] or _checked(meta["check"], f.name)
    if meta["choices"]:
        kw["choices"] = list(meta["choices"])
    if meta["metavar"] is not None:
        kw["metavar"] = meta["metavar"]
    return kw


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per declared field of the dataclass `cls` (``lr`` -> ``--lr``), in declaration order."""
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli"):
            parser.add_argument(flag(f.name), *f.metadata["flags"], **argparse_kwargs(f, getattr(defaults, f.name)))


# ----------------------------------------------------------------------------------------------- documenting
TABLE_BEGIN, TABLE_END = "<!-- options-table:begin -->", "<!-- options-table:end -->"


def _accepts(f: dataclasses.Field, default) -> str:
    meta = f.metadata
    if meta["accepts"]:
        return meta["accepts"]
    if isinstance(default, bool):
        return f"on / off (`--no-{flag(f.name)[2:]}`)"
    if meta["choices"]:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    if meta["bound"] is not None:
        kind = "whole numbers" if _number_kind(f) is int else "numbers"
        pair = "two " if isinstance(default, tuple) else ""
        return f"{pair}{kind} {meta['bound'].describe()}" + (", or `none`" if meta["allow_none"] else "")
    if isinstance(default, dict):
        return "`KEY=VALUE` ..."
    return "text"


# a help text's closing "(default: ...)", nested brackets included: the table shows it in the default column
_SAYS_DEFAULT = re.compile(r"\s*\(default:?\s*((?:[^()]|\([^()]*\))*)\)$")


def _table_row(f: dataclasses.Field, default) -> str:
    text = f.metadata["help"]
    said = _SAYS_DEFAULT.search(text)
    if said:
        text, shown = text[:said.start()], said.group(1).replace("<", "\\<")
    elif isinstance(default, bool):
        shown = f"`{'on' if default else 'off'}`"
    else:
        value = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "" if default in (None, {}) else f"`{value}`"
    names = ", ".join(f"`{n}`" for n in (flag(f.name), *f.metadata["flags"]))
    what = text.replace("|", "\\|")
    return f"| {names} | {shown} | {_accepts(f, default)} | {what} |"


def options_table(cls) -> str:
    """The Markdown table of every flag of the dataclass `cls`: flag, default, values accepted, what it does."""
    defaults = cls()
    rows = [_table_row(f, getattr(defaults, f.name)) for f in dataclasses.fields(cls) if f.metadata.get("cli")]
    return "\n".join(["| flag | default | accepts | what |", "|---|---|---|---|", *rows])


def replace_table(text: str, table: str) -> str:
    """`text` with the part between the table markers replaced by `table`."""
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"no {TABLE_BEGIN} ... {TABLE_END} markers to put the options table between")
    return f"{text[:start + len(TABLE_BEGIN)]}\n{table}\n{text[end:]}"
