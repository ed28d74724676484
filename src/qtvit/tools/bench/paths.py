"""The CPU inference paths the model benchmark compares, built the same way for every model.

Modes (``qtvit benchmark models --modes``):

- ``eager``: the model as built, eval mode, ``torch.inference_mode``;
- ``fused``: the inference form for the benchmarked size (BatchNorms folded, positional embeddings cached);
- ``fused-dynamic``: the inference form with nothing shape-specific (``inference_form(model, None)``: the
  positional embedding is resized per call, as two small matrix products), valid for every input size;
- ``jit``: ``torch.jit.trace`` + ``torch.jit.optimize_for_inference`` (freeze, conv/BN/activation folding,
  oneDNN weight prepacking) of ``fused-dynamic`` (oneDNN graph fusion, ``torch.jit.enable_onednn_fusion``,
  fails on this graph in torch 2.13: "partition compile failed");
- ``compile``: ``torch.compile`` of the inference form, compiled per size;
- ``onnxruntime``: the dynamic ONNX graph of ``qtvit export`` in onnxruntime's CPU provider (all graph
  optimisations, idle worker threads spin);
- ``onnxruntime-nospin``: the same session with spinning off (``session.intra_op.allow_spinning=0``): idle
  workers sleep, which helps on a CPU shared with other jobs and costs a little on an idle one;
- ``onnxruntime-int8``: the graph of ``qtvit export --quantize int8`` (convs and classifier in INT8, attention in
  fp32), calibrated here on random inputs: right for its speed, not its accuracy;
- ``cudagraph`` (CUDA only): the ``fused`` form captured once in a CUDA graph and replayed, which removes the
  per-kernel launch cost that dominates small batches on a GPU, without compiling anything.

Every mode but the onnxruntime ones runs on any device and dtype (``Forms(device=..., dtype=...)``): the model is
fused in float32 and cast afterwards, so BatchNorm folding does not round twice.

Also here: the loader of the official QT-ViT code from a local checkout, for side-by-side comparisons (its code is
never copied here).
"""
from __future__ import annotations

import copy
import importlib
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..._utils import parse_model_spec
from ...models import create_model, inference_form
from ..export import calibrate_batchnorm, export_onnx, onnx_session, quantize_onnx, traceable_copy
from .detection import DETECTOR_MODES, build_target, example_input, takes_images

__all__ = ["MODES", "Forms", "runner", "build_model", "benchmark_weights", "count_flops", "interleaved_times",
           "load_official_qtvit", "jit_form", "cuda_graph_runner"]

MODES = ("eager", "fused", "fused-dynamic", "jit", "compile", "cudagraph", "onnxruntime", "onnxruntime-nospin",
         "onnxruntime-int8")


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """An eval-mode model from a name or a ``name:key=value`` spec (``num_classes=None``: the model's own), with
    ``benchmark_weights``; ``name.backbone`` is a detector's backbone+FPN (``bench.detection``)."""
    def build(whole: str) -> nn.Module:
        name, kwargs = parse_model_spec(whole)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return benchmark_weights(create_model(name, **kwargs))
    return build_target(spec, build)


def benchmark_weights(model: nn.Module) -> nn.Module:
    """Random weights whose activations have a trained model's scale: BatchNorm statistics from one random batch.
    At init (running variance 1, small weights) the activations shrink to ~1e-12 through the stages and the
    attention products become denormal floats, which the CPU computes 10-100x slower: measured 3.5 ms instead of
    0.06 ms for one (16, 1024, 16) state read in efficientvit_b1 at 512 px. Every model a benchmark compares,
    the official code's included, gets this (a detector: its backbone+FPN, which takes the normalised batch). Eval
    mode."""
    calibrate_batchnorm(model.backbone if takes_images(model) else model, 224)
    return model.eval()


def count_flops(model: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs (2 per multiply-add) of one forward on an input of ``shape``, by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    counter = FlopCounterMode(display=False)
    if takes_images(model) or hasattr(model, "input_size_of"):  # a detector's count depends on its images
        x = example_input(model, shape[0], shape[-2], shape[-1], p.device, p.dtype, shape[1],
                          torch.Generator().manual_seed(0))
    else:
        x = torch.zeros(*shape, device=p.device, dtype=p.dtype)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def runner(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def interleaved_times(fns: dict[str, Callable[[], None]], repeats: int = 9, warmup: int = 2,
                      pause_s: float = 0.0) -> dict[str, list[float]]:
    """Run the callables in turn (A B A B ...) ``repeats`` times each, so load drifts hit all of them alike;
    ``pause_s`` before each timed call lets the previous one's spinning worker threads go idle first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def cuda_graph_runner(model: nn.Module, x: torch.Tensor, warmup: int = 3) -> Callable[[], None]:
    """``model(x)`` captured in a CUDA graph: the returned call replays it (same input buffer, same output buffer).
    The warm-up runs on a side stream, as the capture requires (cuDNN/cuBLAS pick their algorithms there)."""
    if x.device.type != "cuda":
        raise ValueError(f"cudagraph mode needs a CUDA device, got {x.device}; use --device cuda")
    stream = torch.cuda.Stream(x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(warmup):
            model(x)
    torch.cuda.current_stream(x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        model(x)
    return graph.replay


@torch.no_grad()
def jit_form(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` + ``optimize_for_inference`` of the size-free inference form (valid for every input size:
    the positional-embedding resize is traced from the input's shape, the attention runs in one chunk)."""
    with warnings.catch_warnings():  # the tracer's warnings about shape checks hold for every size (tools.export)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(traceable_copy(inference_form(model, None)), example, check_trace=False)
        return torch.jit.optimize_for_inference(traced.eval())


class Forms:
    """Builds each mode's callable for one model, caching what is shared between sizes (ONNX sessions, the
    traced module)."""

    def __init__(self, model: nn.Module, onnx_dir: Path, threads: int | None = None, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.eval().to(self.device)  # float32: each form is fused first, then cast
        self.onnx_dir = Path(onnx_dir)
        self.threads = threads
        self.note = getattr(model, "bench_note", "")  # what the rows of this model time, where not the obvious
        self._cache: dict[str, object] = {}
        self.setup_s: dict[str, float] = {}

    def _cast(self, model: nn.Module) -> nn.Module:
        return model if self.dtype == torch.float32 else model.to(self.dtype)

    def _in_dtype(self) -> tuple[nn.Module, float]:
        """(the model in the benchmark's dtype, setup seconds): the model itself in float32, else one cast copy."""
        if self.dtype == torch.float32:
            return self.model, 0.0
        return self._shared("cast", lambda: copy.deepcopy(self.model).to(self.dtype))

    def _shared(self, mode: str, make: Callable[[], object]) -> tuple[object, float]:
        if mode not in self._cache:
            t0 = time.perf_counter()
            self._cache[mode] = make()
            self.setup_s[mode] = time.perf_counter() - t0
        return self._cache[mode], self.setup_s[mode]

    def _onnx_path(self) -> Path:
        path = self.onnx_dir / "model.onnx"
        return path if path.exists() else export_onnx(self.model, path, (224, 224), dynamic=True)

    def _int8_path(self) -> Path:
        g = torch.Generator().manual_seed(0)
        calib = [torch.randn(1, getattr(self.model, "in_chans", 3), 224, 224, generator=g) for _ in range(4)]
        return quantize_onnx(self._onnx_path(), self.onnx_dir / "model_int8.onnx", calib)

    def build(self, mode: str, h: int, w: int, batch: int) -> tuple[Callable[[], None], float]:
        """(the call, its setup seconds)."""
        if takes_images(self.model) and mode not in DETECTOR_MODES:
            raise ValueError(f"mode {mode!r}: a detector runs {', '.join(DETECTOR_MODES)}; its backbone+FPN "
                             "(NAME.backbone) runs in every mode")
        x = example_input(self.model, batch, h, w, self.device, self.dtype)
        if isinstance(x, torch.Tensor):
            h, w = x.shape[-2:]  # a detector's backbone+FPN: the padded batch of an HxW image
        t0 = time.perf_counter()
        if mode == "eager":
            model, setup = self._in_dtype()
            return runner(model, x), setup
        if mode == "fused":
            return runner(self._cast(inference_form(self.model, (h, w))), x), time.perf_counter() - t0
        if mode == "fused-dynamic":
            fused, setup = self._shared(mode, lambda: self._cast(inference_form(self.model, None)))
            return runner(fused, x), setup
        if mode == "jit":
            traced, setup = self._shared(mode, lambda: jit_form(self._in_dtype()[0], x))
            return runner(traced, x), setup
        if mode == "compile":
            compiled = torch.compile(self._cast(inference_form(self.model, (h, w))), dynamic=False)
            run = runner(compiled, x)
            run()  # compile now, so the setup time is its own column and not the warm-up's
            return run, time.perf_counter() - t0
        if mode == "cudagraph":
            return cuda_graph_runner(self._cast(inference_form(self.model, (h, w))), x), time.perf_counter() - t0
        if mode.startswith("onnxruntime"):
            if self.device.type != "cpu" or self.dtype != torch.float32:
                raise ValueError(f"mode {mode!r} runs on the CPU in float32 only (onnxruntime's CPU provider); "
                                 "use eager, fused, compile or cudagraph on other devices and dtypes")
            spin, int8 = mode != "onnxruntime-nospin", mode == "onnxruntime-int8"
            sess, setup = self._shared(mode, lambda: onnx_session(self._int8_path() if int8 else self._onnx_path(),
                                                                  self.threads, spinning=spin))
            arr = x.numpy()
            return (lambda: sess.run(None, {"input": arr})), setup
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def load_official_qtvit(repo: str | Path, variant: str = "b1") -> nn.Module:
    """QT-ViT from a local checkout of AMD-AIG-AIMA/AMD_QTViT (``efficientvit_cls_<variant>``; b1 = QT-ViT-1),
    ``benchmark_weights``, eval mode, for speed comparisons. The training-only modules its model files import
    (``efficientvit.apps.trainer``, which needs torchpack) are stubbed; square inputs only, as in that code."""
    repo = Path(repo)
    if not (repo / "efficientvit" / "models" / "efficientvit" / "cls.py").is_file():
        raise FileNotFoundError(f"{repo} is not a checkout of AMD-AIG-AIMA/AMD_QTViT (no efficientvit/models/"
                                "efficientvit/cls.py); clone it and pass its folder")
    if "efficientvit" in sys.modules and not str(getattr(sys.modules["efficientvit"], "__file__", "")).startswith(
            str(repo.resolve())):
        raise RuntimeError("another package named efficientvit is already imported; run in a fresh process")
    stub = types.ModuleType("efficientvit.apps.trainer.run_config")
    stub.Scheduler = type("Scheduler", (), {"PROGRESS": 0})  # read only by drop-path schedules in training
    for name in ("efficientvit.apps", "efficientvit.apps.trainer"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules.setdefault(stub.__name__, stub)
    sys.path.insert(0, str(repo.resolve()))
    try:
        cls = importlib.import_module("efficientvit.models.efficientvit.cls")
    finally:
        sys.path.remove(str(repo.resolve()))
    return benchmark_weights(getattr(cls, f"efficientvit_cls_{variant}")())
