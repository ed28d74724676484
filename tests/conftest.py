"""What the tests share: where the data and the team's fixtures are, one relative-error measure, and tiny
registered models for the data / training / CLI tests (the zoo's models are too slow for many short runs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from qtvit.models import list_models, register_model, unregister_model

REPO = Path(__file__).resolve().parents[1]
# CI clones main with the team's shared/ beside the checkout; QTVIT_SHARED_FIXTURES points elsewhere.
SHARED_FIXTURES = Path(os.environ.get("QTVIT_SHARED_FIXTURES") or REPO.parent / "shared" / "fixtures")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the one relative error of the parity and kernel tests."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max()).item()


SMALL_FMNIST = str(Path(__file__).parent / "data" / "fashion_mnist_small")


class _DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.drop_prob = float(p)

    def forward(self, x):
        if not self.training or self.drop_prob == 0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, 1) >= self.drop_prob).to(x.dtype)
        return x * keep / (1 - self.drop_prob)


class TinyNet(nn.Module):
    """conv-norm-act stem, one residual block with drop path, pooled linear head: ~3k parameters."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, norm: type[nn.Module] = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, width: int = 16):
        super().__init__()
        self.pretrained_cfg = {"input_size": (in_chans, 16, 16), "crop_pct": 1.0, "interpolation": "bicubic",
                               "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1, bias=False), norm(width), nn.GELU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), norm(width), nn.GELU())
        self.drop_path = _DropPath(drop_path_rate)
        self.head = nn.Linear(width, num_classes)

    def reset_classifier(self, num_classes: int):
        self.head = nn.Linear(self.head.in_features, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.drop_path(self.block(x))
        return self.head(x.mean((2, 3)))


def _gn(c):
    return nn.GroupNorm(4, c)


def train_tiny(num_classes: int = 10, in_chans: int = 1, drop_path_rate: float = 0.0, pretrained: bool = False,
               **kw) -> nn.Module:
    return TinyNet(num_classes, in_chans, nn.BatchNorm2d, drop_path_rate, **kw)


def train_tiny_gn(num_classes: int = 10, in_chans: int = 1, drop_path_rate: float = 0.0, pretrained: bool = False,
                  **kw) -> nn.Module:
    return TinyNet(num_classes, in_chans, _gn, drop_path_rate, **kw)


def register_tiny_models(*extra) -> list[str]:
    """Register the tiny test models (idempotent); returns the names registered by this call."""
    names = []
    for fn in (train_tiny, train_tiny_gn, *extra):
        if fn.__name__ not in list_models():
            register_model(fn)
            names.append(fn.__name__)
    return names


@pytest.fixture(scope="module")
def tiny_models():
    """The tiny models, registered for a test module only: the zoo's own tests never see them."""
    names = register_tiny_models()
    yield
    for n in names:
        unregister_model(n)


def tiny_config(tmp_path, **kw):
    from qtvit.train import make_config
    base = dict(model="train_tiny", data=SMALL_FMNIST, output=str(tmp_path), name="run", epochs=2, batch_size=20,
                eval_batch_size=50, lr=3e-3, warmup_epochs=0.5, progress=False, device="cpu", threads=1)
    base.update(kw)
    return make_config(**base)




def run_two_processes(script: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` under torchrun with two CPU processes (gloo), one thread each, outside any torchrun of ours;
    fails the test with the processes' output when they fail."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
