"""Files a user loads are data: crafted pickles never run, and damaged files of every kind end in a clear error.

The fuzz cases (random bytes, truncated and bit-flipped copies of valid files) go through every reader:
``create_model(checkpoint_path=...)``, ``load_checkpoint``, ``read_config`` and ``load_train_state``. Each may
succeed (a flipped bit in tensor data is still a valid file) or raise CheckpointError / ValueError /
FileNotFoundError with a message; any other exception type, and any file changed outside the test's folder, fails.
"""
from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import qtvit
from qtvit import checkpoints, save_pretrained
from qtvit.checkpoints import CheckpointError, load_checkpoint, load_train_state, read_config

from _tiny_model import TinyNet, randomize, registered
from conftest import REPO

CLEAR = (CheckpointError, ValueError, FileNotFoundError)


class _RunsCode:
    """Unpickling this runs a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _LoadsNumpyPickle:
    """A numpy global outside the narrow allow-list (np.load can itself unpickle)."""

    def __reduce__(self):
        return np.load, ("/nonexistent.npy",)


@pytest.fixture
def tiny():
    with registered() as name:
        yield name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("where", ["weights", "train_state", "plain_pickle"])
def test_code_in_a_pickle_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _RunsCode(marker)
    ck = tmp_path / "ck"
    ck.mkdir()
    if where == "weights":
        torch.save({"state_dict": TinyNet().state_dict(), "extra": evil}, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError, match=r"evil\.pt holds Python objects .* such as (posix|os)\.system"):
            load_checkpoint(TinyNet(), tmp_path / "evil.pt")
    elif where == "train_state":
        torch.save({"global_step": 3, "rng": [evil]}, ck / "train_state.pt")
        with pytest.raises(CheckpointError, match=r"training state .*train_state\.pt holds Python objects .*system"):
            load_train_state(ck)
    else:  # a raw pickle (not torch's zip format) under the expected name
        (ck / "train_state.pt").write_bytes(pickle.dumps({"global_step": 3, "x": evil}, protocol=2))
        with pytest.raises(CheckpointError, match=r"refuses, such as (posix|os)\.system"):
            load_train_state(ck)
        (ck / "train_state.pt").write_bytes(pickle.dumps({"global_step": 3, "x": evil}, protocol=5))
        with pytest.raises(CheckpointError, match=r"cannot read training state .*train_state\.pt"):
            load_train_state(ck)
    assert not marker.exists()


def test_numpy_is_allowed_only_for_arrays(tmp_path):
    torch.save({"rng": np.random.get_state(), "x": np.arange(3, dtype=np.int64), "y": np.float32(2.5)},
               tmp_path / "train_state.pt")
    state = load_train_state(tmp_path)
    assert state["rng"][0] == "MT19937" and state["x"].tolist() == [0, 1, 2] and state["y"] == 2.5
    torch.save({"rng": _LoadsNumpyPickle()}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"such as numpy\.(lib\.npyio\.)?load|such as numpy\..*load"):
        load_train_state(tmp_path)
    # weights files do not get even that: numpy arrays there are refused
    torch.save({"state_dict": {"w": np.zeros(3)}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="refuses"):
        load_checkpoint(TinyNet(), tmp_path / "w.pt")


# ------------------------------------------------------------------------------------------------ fuzz


def _snapshot() -> dict[str, tuple[int, int]]:
    """Size and mtime of the checkout's files (a reader that wrote anywhere would show up here)."""
    out = {}
    for top in ("src", "tests"):
        for root, dirs, files in os.walk(REPO / top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                st = os.stat(os.path.join(root, f))
                out[os.path.join(root, f)] = (st.st_size, st.st_mtime_ns)
    return out


def _variants(data: bytes, rng: random.Random, n_cuts: int = 8, n_flips: int = 4) -> list[bytes]:
    cuts = sorted({0, 1, 8, 9, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(n_cuts)})
    out = [data[:c] for c in cuts]
    for _ in range(n_flips):
        b = bytearray(data)
        for _ in range(3):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out + [rng.randbytes(n) for n in (0, 7, 9, 64, 4096)] + [b"{" * 20000, b"\x00" * 9 + b"{}"]


def _expect_clear(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except CLEAR as e:
        assert str(e).strip(), f"{type(e).__name__} without a message from {fn.__name__}"
    # anything else (KeyError, RuntimeError, SafetensorError, UnpicklingError, ...) propagates and fails the test


def test_damaged_files_end_in_clear_errors(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("QTVIT_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    model = randomize(qtvit.create_model(tiny, num_classes=5))
    good = tmp_path / "good"
    save_pretrained(model, good / "pretrained")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, good / "ck.pt")
    checkpoints.save_checkpoint(good / "run", 4, model, {"global_step": 4, "opt": {"m": torch.ones(2)}})
    sources = {
        "model.safetensors": (good / "pretrained" / "model.safetensors").read_bytes(),
        "config.json": (good / "pretrained" / "config.json").read_bytes(),
        "ck.pt": (good / "ck.pt").read_bytes(),
        "train_state.pt": (good / "run" / "checkpoints" / "step_00000004" / "train_state.pt").read_bytes(),
    }
    before = _snapshot()
    case = tmp_path / "case"
    for kind, data in sources.items():
        for i, blob in enumerate(_variants(data, rng)):
            folder = case / f"{kind}-{i}"
            folder.mkdir(parents=True)
            if kind == "config.json":  # a save_pretrained folder whose config is damaged
                (folder / "model.safetensors").write_bytes(sources["model.safetensors"])
            (folder / kind).write_bytes(blob)
            path = folder if kind in ("config.json", "train_state.pt") else folder / kind
            if kind == "train_state.pt":
                _expect_clear(load_train_state, folder)
                continue
            _expect_clear(read_config, path)
            _expect_clear(qtvit.create_model, checkpoint_path=path)
            _expect_clear(qtvit.create_model, tiny, num_classes=5, checkpoint_path=path)
            _expect_clear(load_checkpoint, TinyNet(num_classes=5), path)
    assert _snapshot() == before
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("config", [
    [], "text", {"architecture": 5}, {"model_args": {}}, {"architecture": "x", "model_args": []},
    {"architecture": "x", "pretrained_cfg": "none"}, {"model": ["not", "a", "name"]},
    {"model": "x", "img_size": "big", "in_chans": 3}, {"model": "x", "model_kwargs": 7},
])
def test_wrong_config_shapes_are_refused(tmp_path, config):
    save_pretrained(TinyNet(), tmp_path, config={"architecture": "x"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config|metadata"):
        read_config(tmp_path)
    with pytest.raises(CLEAR):
        qtvit.create_model(checkpoint_path=tmp_path)


def test_damaged_metadata_json_is_refused(tmp_path):
    from safetensors.torch import save_file

    for key in ("qtvit_config", "qtvit"):
        save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors", metadata={key: '{"architecture": "x"'})
        with pytest.raises(CheckpointError, match=rf"the '{key}' metadata of .*m\.safetensors is not valid JSON"):
            read_config(tmp_path / "m.safetensors")


@pytest.mark.parametrize("section, key, value", [
    ("model_args", "num_classes", "3"), ("model_args", "num_classes", 1e12), ("model_args", "num_classes", 10 ** 12),
    ("model_args", "num_classes", True), ("model_args", "num_classes", None), ("model_args", "in_chans", 0),
    ("pretrained_cfg", "num_classes", "3"), ("pretrained_cfg", "num_classes", 1e12),
    ("pretrained_cfg", "input_size", [3, 1e12, 224]), ("pretrained_cfg", "input_size", "224"),
])
def test_hand_edited_counts_are_refused(tmp_path, section, key, value):
    """Issue 27: a config whose num_classes is "3" or 1e12 ended in a TypeError or a huge allocation."""
    save_pretrained(qtvit.create_model("qtvit_pico", num_classes=3), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[section][key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"{section}\.{key} is .*, not "):
        read_config(tmp_path)
    with pytest.raises(CheckpointError, match="not valid"):
        qtvit.create_model(checkpoint_path=tmp_path)
