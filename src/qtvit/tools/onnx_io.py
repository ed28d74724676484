"""The ONNX graphs' interface and onnxruntime beside PyTorch: the input and output names, onnxruntime sessions, the
onnxruntime-against-PyTorch check and onnxruntime latency (``qtvit.tools.export`` writes the graphs and re-exports
these).

A graph has one input ``input`` (B, C, H, W). A model returning one tensor (a classifier's logits, a segmentation
model's) gives one output ``logits``; a model returning a dict of maps (a detector's backbone+FPN, ``BackboneFPN``:
torchvision's keys "0".."3", "pool") gives one output per key, in the dict's order, named ``features_<key>``
(ONNX names cannot be bare numbers), each with free batch, height and width.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from .._utils import parse_size

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "FEATURE_PREFIX", "output_names", "output_tensors", "output_axes",
           "onnx_session", "check_onnx", "onnxruntime_latency"]

INPUT_NAME, OUTPUT_NAME = "input", "logits"
FEATURE_PREFIX = "features_"


def in_chans_of(model: nn.Module) -> int:
    if hasattr(model, "in_chans"):
        return int(model.in_chans)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3,))[0])


def output_tensors(out: torch.Tensor | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """A model's output as the graph's outputs, in order: the tensor, or the dict's values."""
    return list(out.values()) if isinstance(out, Mapping) else [out]


def output_names(out: torch.Tensor | Mapping[str, torch.Tensor]) -> list[str]:
    """The graph's output names for a model output (see the module docstring)."""
    return [f"{FEATURE_PREFIX}{k}" for k in out] if isinstance(out, Mapping) else [OUTPUT_NAME]


def output_axes(out: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """The free axes of each output: the batch, and a map's height and width (its own names: each level's size is
    its own function of the input's)."""
    axes = {}
    for name, t in zip(output_names(out), output_tensors(out)):
        axes[name] = {0: "batch"} if t.dim() < 4 else {0: "batch", 2: f"height_{name}", 3: f"width_{name}"}
    return axes


def onnx_session(path: str | Path, threads: int | None = None, *, spinning: bool = True):
    """An onnxruntime CPU InferenceSession for ``path`` (``threads``: intra-op threads, default torch's), all graph
    optimisations on. ``spinning=False`` lets idle worker threads sleep instead of spinning: faster on a CPU shared
    with other jobs (measured 1.3x at 512-1024 px there), a little slower on an idle one."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("onnxruntime is not installed: pip install 'qtvit[export]'") from e
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; write one with qtvit.tools.export.export_onnx or `qtvit export`")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_onnx(
    model: nn.Module, path: str | Path, sizes: Iterable[int | Sequence[int]], *, batch_size: int = 2,
    atol: float = 1e-4, rtol: float = 0.0, seed: int = 0, session=None,
) -> list[dict]:
    """Compare onnxruntime with PyTorch (eval mode) on random inputs of each size, every output; raise if off by more
    than ``atol + rtol * max|output|``.

    Returns one dict per size: ``size`` (H, W), ``batch``, ``max_abs_diff``, ``max_abs_output`` (of PyTorch, over
    all outputs; a freshly initialised EfficientViT/QT-ViT outputs ~1e-14, which makes any check pass: compare
    trained weights, or see ``calibrate_batchnorm``).
    """
    sess = session or onnx_session(path)
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        h, w = parse_size(size)
        x = torch.randn(batch_size, in_chans_of(model), h, w, generator=g)
        with torch.no_grad():
            out = model(x)
        refs, names = [t.float().numpy() for t in output_tensors(out)], output_names(out)
        outs = sess.run(names, {INPUT_NAME: x.numpy()})
        diff, top = 0.0, 0.0
        for name, o, ref in zip(names, outs, refs):
            if o.shape != ref.shape:
                raise AssertionError(f"onnxruntime output {name} shape {o.shape} != PyTorch {ref.shape} at {h}x{w}")
            diff, top = max(diff, float(abs(o - ref).max())), max(top, float(abs(ref).max()))
        rows.append(dict(size=(h, w), batch=batch_size, max_abs_diff=diff, max_abs_output=top))
        if not diff <= atol + rtol * top:
            raise AssertionError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol:g} + {rtol:g} x "
                                 f"{top:.3g}) at {batch_size}x{h}x{w}")
    return rows


def onnxruntime_latency(session, shape: Sequence[int], *, repeats: int = 7, warmup: int = 1,
                        budget_s: float | None = None) -> tuple[float, list[float]]:
    """Median wall time (s) of one onnxruntime run (every output) on a random input of ``shape``, and all the
    times."""
    import numpy as np

    from .measure import median_time

    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    return median_time(lambda: session.run(None, {INPUT_NAME: x}), torch.device("cpu"),
                       repeats=repeats, warmup=warmup, budget_s=budget_s)
