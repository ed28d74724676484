"""The benchmark commands check their arguments before measuring (issue 27): the device, the models' constructor
arguments, the output paths and every number; a bad value is one clean line, never a traceback."""
from __future__ import annotations

import time

import pytest
import torch

from qtvit.cli import main


def _fails(argv, capsys) -> str:
    """The message of a benchmark that stops on its arguments (SystemExit: exit code 1 or argparse's 2)."""
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert time.perf_counter() - t0 < 30  # refused before measuring
    err = capsys.readouterr().err
    text = e.value.code if isinstance(e.value.code, str) else err
    assert "Traceback" not in text and text.strip()
    return text


@pytest.mark.parametrize("device, message", [("bogus", "unknown device 'bogus'"), ("cuda", "no CUDA device"),
                                             ("meta", "not benchmarked here")])
@pytest.mark.parametrize("command", ["kernels", "models"])
def test_device_is_checked_first(command, device, message, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    text = _fails(["benchmark", command, "--device", device, "--out", str(tmp_path / "r.csv")], capsys)
    assert message in text and f"qtvit benchmark {command}" in text
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_constructor_argument_is_one_line(tmp_path, capsys):
    text = _fails(["benchmark", "models", "--models", "qtvit_pico:bogus=1", "--out", str(tmp_path / "r.csv")], capsys)
    assert "--models qtvit_pico:bogus=1" in text and "bogus" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["kernels", "models"])
def test_outputs_are_checked_before_measuring(command, tmp_path, capsys):
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "file").write_text("x")
    text = _fails(["benchmark", command, "--device", "cpu", "--out", str(tmp_path / "dir.csv")], capsys)
    assert "is a folder" in text
    text = _fails(["benchmark", command, "--device", "cpu", "--out", str(tmp_path / "file" / "r.csv")], capsys)
    assert "is a file, not a folder" in text and "Errno" not in text


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e308", "x"])
@pytest.mark.parametrize("command, flag", [("kernels", "--repeats"), ("kernels", "--ns"), ("kernels", "--heads"),
                                           ("kernels", "--budget"), ("models", "--repeats"), ("models", "--sizes"),
                                           ("models", "--batch-sizes"), ("models", "--max-call"),
                                           ("models", "--compile-sizes")])
def test_bad_numbers_are_usage_errors(command, flag, value, tmp_path, capsys):
    if value in ("inf", "1e308") and flag in ("--budget", "--max-call"):
        pytest.skip("no time limit is a meaning of its own")
    with pytest.raises(SystemExit) as e:
        main(["benchmark", command, flag, value, "--out", str(tmp_path / "r.csv")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_sizes_too_large_to_mean_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "models", "--sizes", "100000"])
    assert e.value.code == 2 and "at most 8192 pixels" in capsys.readouterr().err
