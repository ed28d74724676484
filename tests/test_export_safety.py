"""`qtvit export` never touches a user's files, writes one portable file, and answers bad values with a clean error
(issue 27: the INT8 intermediate, the --dynamo external data, opsets and sizes, --num-classes with weights)."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

import qtvit
from qtvit.cli import main
from qtvit.tools.export import check_onnx, export_onnx, onnx_session

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _fmnist(folder, n=12):
    from qtvit.data.fashion_mnist import write_idx

    rng = np.random.default_rng(0)
    folder.mkdir()
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return folder


def _int8_argv(out, data, images="8"):
    return ["export", "qtvit_pico", "--num-classes", "10", "--img-size", "28", "-o", str(out), "--quantize", "int8",
            "--calibration-data", str(data), "--calibration-images", images]


def test_int8_export_leaves_a_users_fp32_file_alone(tmp_path, capsys):
    data = _fmnist(tmp_path / "fmnist")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    user = out_dir / "z.fp32.onnx"
    user.write_bytes(b"the user's own file")
    assert main(_int8_argv(out_dir / "z.onnx", data)) == 0
    assert user.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out_dir.iterdir()) == ["z.fp32.onnx", "z.onnx"]  # no intermediate left
    assert onnx_session(out_dir / "z.onnx") is not None
    # a failed calibration (no such dataset) leaves nothing behind either, and the user's file as it was
    assert main(_int8_argv(out_dir / "y.onnx", tmp_path / "missing")) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["z.fp32.onnx", "z.onnx"]
    assert user.read_bytes() == b"the user's own file"


def test_int8_calibration_on_a_split_smaller_than_asked(tmp_path, capsys):
    data = _fmnist(tmp_path / "fmnist", n=12)
    assert main(_int8_argv(tmp_path / "q.onnx", data, images="256")) == 0  # 12 images: all of them are used
    assert (tmp_path / "q.onnx").is_file() and "--batch-size" not in capsys.readouterr().err


def test_dynamo_export_is_one_portable_file(tmp_path):
    model = qtvit.create_model("qtvit_pico", num_classes=10).eval()
    first = tmp_path / "a"
    export_onnx(model, first / "m.onnx", 28, dynamo=True)
    assert sorted(p.name for p in first.iterdir()) == ["m.onnx"]  # no hidden .data beside it
    moved = tmp_path / "b" / "copy.onnx"
    moved.parent.mkdir()
    os.replace(first / "m.onnx", moved)
    rows = check_onnx(model, moved, [28, (28, 60)], batch_size=2)  # weights travel with the file; H, W free
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)


def test_dynamo_export_that_fixes_the_size_is_refused(tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    assert main(["export", "qtvit_seg_nano_scenes", "--img-size", "64", "--dynamo", "-o", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "fixed the height and width" in err and "without --dynamo" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_a_dynamo_export(tmp_path, monkeypatch):
    """The exporter swallows KeyboardInterrupt and goes on to write the file (measured with torch 2.13): the
    interrupt must still end the export, with no file written."""
    def swallowing_export(model, args, f, **kw):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        open(f, "wb").write(b"graph")

    monkeypatch.setattr(torch.onnx, "export", swallowing_export)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(qtvit.create_model("qtvit_pico", num_classes=10), tmp_path / "m.onnx", 28, dynamo=True)
    assert list(tmp_path.iterdir()) == []


def test_num_classes_with_a_checkpoint_is_refused_unless_it_matches(tmp_path, capsys):
    src = qtvit.create_model("qtvit_pico", num_classes=10)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    argv = ["export", "qtvit_pico", "--img-size", "28", "--checkpoint", str(tmp_path / "w.pth")]
    assert main(argv + ["--num-classes", "3", "-o", str(tmp_path / "a.onnx")]) == 1
    err = capsys.readouterr().err
    assert "--num-classes 3" in err and "random" in err and not (tmp_path / "a.onnx").exists()
    assert main(argv + ["-o", str(tmp_path / "b.onnx")]) == 1  # the model's default, 1000 classes, differs too
    assert "default (1000)" in capsys.readouterr().err
    assert main(argv + ["--num-classes", "10", "-o", str(tmp_path / "c.onnx")]) == 0


@pytest.mark.parametrize("flag", ["--img-size", "--opset", "--calibration-images", "--batch-size", "--num-classes"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e308", "100000", "99", "x"])
def test_bad_numbers_are_usage_errors(flag, value, tmp_path, capsys):
    ok = {("--batch-size", "99"), ("--calibration-images", "99"), ("--calibration-images", "100000"),
          ("--num-classes", "99"), ("--num-classes", "100000"), ("--img-size", "99")}
    if (flag, value) in ok:
        pytest.skip("a valid value")
    with pytest.raises(SystemExit) as e:
        main(["export", "qtvit_pico", flag, value, "-o", str(tmp_path / "x.onnx")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset, dynamo", [(21, False), (24, True)])
def test_opsets_beyond_the_exporters_are_refused(opset, dynamo, tmp_path):
    with pytest.raises(ValueError, match=f"opset {opset}: the .* exporter writes opsets up to"):
        export_onnx(qtvit.create_model("qtvit_pico"), tmp_path / "x.onnx", 28, opset=opset, dynamo=dynamo)


def test_output_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    assert main(["export", "qtvit_pico", "--img-size", "28", "-o", str(tmp_path / "f" / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Errno" not in err
