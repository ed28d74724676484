"""Two CPU processes under torchrun (gloo): the ranks stay identical and equal one process with the same global
batch. The model uses GroupNorm: BatchNorm's batch statistics of half a batch differ from the full batch's, and
torch's SyncBatchNorm (which would fix that) runs only on CUDA."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from qtvit.cli import main
from qtvit.train import train
from conftest import SMALL_FMNIST, run_two_processes, tiny_config

pytestmark = pytest.mark.usefixtures("tiny_models")

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from conftest import register_tiny_models, tiny_config
    from qtvit.train import train
    register_tiny_models()
    r = train(tiny_config({out!r}, model="train_tiny_gn", name="ddp", batch_size=10, epochs=2, lr=3e-3,
                          checkpoint_every_steps=0))
    rank = int(os.environ["RANK"])
    torch.save({{k: v.detach() for k, v in r["model"].state_dict().items()}}, os.path.join({out!r}, f"rank{{rank}}.pt"))
    if rank == 0:
        json.dump([h["top1"] for h in r["history"]], open(os.path.join({out!r}, "top1.json"), "w"))
""")


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    run_two_processes(script)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # DDP keeps the ranks identical

    single = train(tiny_config(tmp_path, model="train_tiny_gn", name="single", batch_size=20, epochs=2, lr=3e-3))
    sd = single["model"].state_dict()
    for k in sd:
        torch.testing.assert_close(r0[k], sd[k], atol=2e-5, rtol=1e-4, msg=k)
    assert json.loads((tmp_path / "top1.json").read_text()) == [h["top1"] for h in single["history"]]
    # the run folder of the distributed run holds one metrics row per epoch, written by rank 0 only
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[0])["images_per_s"] > 0


_VALIDATE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import register_tiny_models
    from qtvit.cli import main
    register_tiny_models()
    sys.exit(main(["validate", "--checkpoint", {run!r}, "--data", {data!r}, "--json", "--workers", "0"]))
""")


def test_validate_under_torchrun_prints_one_result_equal_to_one_process(tmp_path, capsys):
    run = train(tiny_config(tmp_path, model="train_tiny_gn", name="val", epochs=1))["run_dir"]
    script = tmp_path / "ddp_validate.py"
    script.write_text(_VALIDATE.format(tests=str(Path(__file__).parent), run=str(run), data=SMALL_FMNIST))
    lines = run_two_processes(script).stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 prints, rank 1 does not
    capsys.readouterr()  # the training's log
    assert main(["validate", "--checkpoint", str(run), "--data", SMALL_FMNIST, "--json", "--workers", "0"]) == 0
    single = json.loads(capsys.readouterr().out)
    two = json.loads(lines[0])
    assert two["images"] == single["images"] and two["top1"] == pytest.approx(single["top1"])
