"""One training run of the kernel study and its measurements: top-1, training images/s, peak memory, parameters."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..measure import peak_memory_bytes
from ...train.optim import create_optimizer, lr_at
from .net import StudyNet

__all__ = ["Recipe", "Data", "Variant", "run_one", "study_device", "variant_name", "parse_variant"]

RESIDUAL_SUFFIX = "+softmax_residual"


@dataclass(frozen=True)
class Recipe:
    """The one recipe every variant is trained with."""
    # 8 epochs (48 000 images) left softmax at the control's level in 4 seeds of 5; 24 it learned the task in all 5
    # (docs/kernel_study.md, "Why 24 epochs")
    epochs: int = 24
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    clip_grad: float = 1.0
    residual_until: float = 0.75  # a softmax residual's λ falls linearly from 1 to 0 over this fraction of training
    dim: int = 32
    depth: int = 2
    head_dim: int = 16


@dataclass
class Data:
    """The canvases as uint8 tensors (N, 1, S, S) and int64 labels."""
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    val_x: Tensor | None = None  # validation canvases, apart from the test canvases: what design choices read
    val_y: Tensor | None = None


@dataclass(frozen=True)
class Variant:
    """One trained configuration: ``<kernel>[+rope][+softmax_residual][@<k>x]``, e.g. ``qt``, ``mala+rope``,
    ``qt+softmax_residual``, ``control@3x`` (the recipe's epochs times k)."""
    kernel: str
    residual: bool = False
    rope: bool = False  # the released layers' RoPE (mala, rala: ``rope=True``)
    length: int = 1

    @property
    def name(self) -> str:
        return (self.kernel + ("+rope" if self.rope else "") + (RESIDUAL_SUFFIX if self.residual else "") +
                (f"@{self.length}x" if self.length != 1 else ""))

    @classmethod
    def parse(cls, name: str) -> "Variant":
        base, _, length = name.partition("@")
        if length and not (length.endswith("x") and length[:-1].isdigit() and int(length[:-1]) >= 1):
            raise ValueError(f"variant {name!r}: a longer schedule is written @<k>x with a whole k >= 1, e.g. qt@3x")
        kernel, *flags = base.split("+")
        unknown = set(flags) - {"rope", RESIDUAL_SUFFIX[1:]}
        if unknown or len(set(flags)) != len(flags):
            raise ValueError(f"variant {name!r}: flags are +rope and {RESIDUAL_SUFFIX}, each at most once")
        return cls(kernel, RESIDUAL_SUFFIX[1:] in flags, "rope" in flags, int(length[:-1]) if length else 1)


def variant_name(kernel: str, residual: bool = False) -> str:
    return Variant(kernel, residual).name


def parse_variant(variant: str) -> tuple[str, bool]:
    """(kernel, with a softmax residual) of a variant name."""
    v = Variant.parse(variant)
    return v.kernel, v.residual


def _to_input(x: Tensor) -> Tensor:
    return x.float().div_(127.5).sub_(1.0)


def build_net(variant: str, recipe: Recipe, img_size: int, num_classes: int) -> StudyNet:
    v = Variant.parse(variant)
    return StudyNet(v.kernel, num_classes=num_classes, img_size=img_size, dim=recipe.dim, depth=recipe.depth,
                    head_dim=recipe.head_dim, residual_softmax=v.residual, **({"rope": True} if v.rope else {}))


@torch.no_grad()
def evaluate(net: StudyNet, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    net.eval()
    correct = sum(int((net(_to_input(x[i:i + batch_size])).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return 100.0 * correct / len(x)


def _step_memory(net: StudyNet, x: Tensor, y: Tensor) -> float | None:
    """Peak extra MiB of one training forward + backward at the recipe's batch size (λ = 1 for a residual)."""
    net.train()

    def step():
        F.cross_entropy(net(x), y).backward()

    got = peak_memory_bytes(step, x.device)
    net.zero_grad(set_to_none=True)
    return None if got is None else got / 2 ** 20


def _train(net: StudyNet, data: Data, recipe: Recipe, seed: int) -> tuple[float, int, int | None]:
    """Train; returns (seconds spent in training steps, images seen, the step whose loss was not finite or None).

    A kernel whose similarities can sum to zero (taylor1) may diverge: training stops at the first non-finite loss
    and the run is recorded as diverged, a result of the kernel, not an error of the study."""
    opt = create_optimizer(net, recipe.lr, recipe.weight_decay)
    n, bs = len(data.train_x), recipe.batch_size
    steps_per_epoch = n // bs
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, round(recipe.warmup_frac * total))
    gen = torch.Generator().manual_seed(seed)
    step, seconds = 0, 0.0
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            x, y = _to_input(data.train_x[idx]), data.train_y[idx]
            t0 = time.perf_counter()
            net.train()
            net.set_residual_weight(max(0.0, 1.0 - step / max(1.0, recipe.residual_until * total)))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, recipe.lr)
            loss = F.cross_entropy(net(x), y)
            if not math.isfinite(loss.item()):
                return seconds + time.perf_counter() - t0, step * bs, step
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
            opt.step()
            seconds += time.perf_counter() - t0
            step += 1
    return seconds, total * bs, None


def study_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, with a clear error where it is not there (``--device cuda`` without a GPU)."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                         f"torch.cuda.is_available() is False); run on a machine with a GPU or use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: the study runs on cpu or cuda")
    return dev


def _on(data: Data, device: torch.device) -> Data:
    if device.type == "cpu":
        return data
    return Data(*(t.to(device) for t in (data.train_x, data.train_y, data.test_x, data.test_y)), data.num_classes,
                *(None if t is None else t.to(device) for t in (data.val_x, data.val_y)))


def run_one(variant: str, seed: int, data: Data, recipe: Recipe,
            device: str | torch.device = "cpu") -> tuple[dict, StudyNet]:
    """Train ``variant`` (``Variant``: a kernel name or ``control``, with +rope, +softmax_residual, @<k>x) with
    ``seed`` on ``device``; its CSV row and the trained net. @<k>x trains the recipe's epochs times k."""
    v, dev = Variant.parse(variant), study_device(device)
    recipe = replace(recipe, epochs=recipe.epochs * v.length)
    data = _on(data, dev)
    torch.manual_seed(seed)
    net = build_net(variant, recipe, data.train_x.shape[-1], data.num_classes).to(dev)
    params = sum(p.numel() for p in net.parameters())
    net.set_residual_weight(1.0)
    mem = _step_memory(net, _to_input(data.train_x[:recipe.batch_size]), data.train_y[:recipe.batch_size])
    torch.manual_seed(seed)  # the memory probe drew no random numbers, but keep the init-to-training path plain
    seconds, images, diverged = _train(net, data, recipe, seed)
    finished = diverged is None
    val = evaluate(net, data.val_x, data.val_y) if finished and data.val_x is not None else None
    row = dict(variant=variant, kernel=v.kernel, softmax_residual=int(v.residual), seed=seed,
               top1=evaluate(net, data.test_x, data.test_y) if finished else None, val_top1=val,
               diverged_at_step=diverged, train_images_per_s=images / max(seconds, 1e-9),
               peak_mib=mem, params=params, train_s=seconds, device=dev.type, threads=torch.get_num_threads(),
               **{f"recipe_{k}": x for k, x in asdict(recipe).items()})
    return row, net
