"""Each training option is declared once (src/qtvit/train/config.py): the `qtvit train` flags, check_config and the
option table of docs/training.md are derived from that declaration."""
import argparse
import dataclasses
from pathlib import Path

import pytest

from qtvit.cli import build_parser, main
from qtvit.options import (TABLE_BEGIN, TABLE_END, Bound, OptionError, add_options, check_options, option,
                           options_table, replace_table)
from qtvit.train.recipes import BOUNDS, check_config, make_config
from qtvit.train.config import TrainConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_the_docs_option_table_is_up_to_date():
    text = DOC.read_text()
    table = text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN):text.index(TABLE_END)].strip()
    assert table == options_table(TrainConfig), \
        "docs/training.md's option table is out of date: run `PYTHONPATH=src python scripts/options_table.py`"


def test_every_field_is_declared_and_has_a_flag_or_says_why_not():
    parser_dests = {a.dest for a in _train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata and f.metadata["help"], f"{f.name} has no option(...) declaration with a help text"
        assert f.name == "recipe" or (f.name in parser_dests) == f.metadata["cli"], f.name
    # --recipe is the parser's own flag, with the RECIPES as its choices
    assert not next(f for f in dataclasses.fields(TrainConfig) if f.name == "recipe").metadata["cli"]
    # the bounds table the robustness fuzz reads is the declarations' bounds
    assert BOUNDS["lr"] == Bound(0, 10, lo_open=True) and BOUNDS["seed"] == Bound(0, 2**32 - 1)


def test_replace_table_needs_its_markers():
    assert replace_table(f"a\n{TABLE_BEGIN}\nold\n{TABLE_END}\nb", "new") == f"a\n{TABLE_BEGIN}\nnew\n{TABLE_END}\nb"
    with pytest.raises(ValueError, match="markers"):
        replace_table("no markers here", "new")


def test_library_errors_name_the_field_and_the_command_words_them_as_flags():
    with pytest.raises(OptionError) as e:
        check_config(make_config(lr=float("inf")))
    assert str(e.value) == "lr must be finite and in (0, 10], got inf"
    assert e.value.as_flags() == "--lr must be finite and in (0, 10], got inf"
    with pytest.raises(OptionError, match=r"^amp must be none, bf16 or fp16, got 'fp8'$"):
        check_config(make_config(amp="fp8"))
    with pytest.raises(OptionError, match=r"^scene_items must be finite and in \[2, 64\], got 1 7$"):
        check_config(make_config(scene_items=(1, 7)))
    with pytest.raises(OptionError, match=r"^name '\.\./x' is not a single folder name"):
        check_config(make_config(name="../x"))
    with pytest.raises(OptionError, match=r"^seed must be a number, got '3'$"):
        check_config(make_config(seed="3"))


def test_a_resumed_run_with_a_bad_saved_option_is_worded_as_a_flag(tmp_path, capsys):
    from qtvit.checkpoints.files import TRAIN_STATE_NAME
    run = tmp_path / "old"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002" / TRAIN_STATE_NAME).write_bytes(b"")  # never read: the options fail first
    (run / "args.json").write_text('{"model": "train_tiny", "lr": 50.0}')  # hand-edited past the bound
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "qtvit train: error: --lr must be finite and in (0, 10], got 50.0" in capsys.readouterr().err


def test_one_declaration_adds_an_option_to_the_parser_the_checks_and_the_docs(capsys):
    # the whole diff of a new option: one field (its use in the loop aside)
    Config = dataclasses.make_dataclass("Config", [
        ("grad_accum", int, option(1, "micro-batches per optimiser step", bound=Bound(1, 64)))], bases=(TrainConfig,))
    parser = argparse.ArgumentParser()
    add_options(parser, Config)
    assert parser.parse_args(["--grad-accum", "4"]).grad_accum == 4
    assert parser.parse_args([]).grad_accum is None  # left out: the recipe's value, then the default
    with pytest.raises(SystemExit):
        parser.parse_args(["--grad-accum", "2.5"])  # whole numbers, from the annotation
    assert "'2.5' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--grad-accum", "65"])
    assert "--grad-accum: 65 is out of range: give a value in [1, 64]" in capsys.readouterr().err
    help_text = parser.format_help()
    assert "micro-batches per optimiser step (default: 1)" in help_text
    check_options(Config(grad_accum=8))
    check_config(Config(grad_accum=8))
    with pytest.raises(OptionError, match=r"^grad_accum must be finite and in \[1, 64\], got 0$"):
        check_config(Config(grad_accum=0))
    assert "| `--grad-accum` | `1` | whole numbers in [1, 64] | micro-batches per optimiser step |" \
        in options_table(Config).splitlines()
