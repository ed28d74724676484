"""ONNX export with dynamic batch and height/width, and the onnxruntime check and latency behind it.

    qtvit export qtvit_1 --format onnx --output qtvit_1.onnx                    # random weights, 224 px trace
    qtvit export qtvit_1 --format onnx --checkpoint qtvit1.pth --output q1.onnx --check
    qtvit export l2vit_tiny --format onnx --img-size 384 512 --static --output l2vit_384x512.onnx
    qtvit export qtvit_pico --checkpoint runs/pico --img-size 28 --quantize int8 --evaluate -o pico_int8.onnx
    qtvit export maskrcnn_qtvit_1.backbone --check          # a detector's backbone+FPN: one output per level

``--output`` may name a folder (the file is then ``<folder>/<model>.onnx``); an existing file is replaced only with
``--overwrite``, and every file is written beside its target and renamed into place (no partial file on failure).
``--checkpoint`` loads through ``create_model(checkpoint_path=...)``, so any checkpoint format it reads works.

The graph has one input ``input`` (B, C, H, W) and one output ``logits`` (B, classes), or, for a detector's
backbone+FPN (``NAME.backbone``), one output ``features_<level>`` per pyramid level (``tools.onnx_io``); with
``dynamic=True`` (the default) B, H and W are free (and each level's height and width with them). Exporter: the TorchScript-based one (``torch.onnx.export(dynamo=False)``),
because it exports every model of the zoo in seconds with free H and W; the torch.export-based one (``dynamo=True``,
``--dynamo``) also works but takes 5-10x longer and specialises on the shape checks of the model code (where that
fixes the height or width, as for the segmentation models, the export is refused: use the default exporter). Both
write one self-contained file (weights embedded), so the .onnx can be copied alone.

Two details make one graph valid for every size (see ``traceable_copy``):
- the linear-attention core splits tokens in chunks of 4096 by a Python loop; tracing would freeze the number of
  chunks, so the exported copy computes every attention in one chunk (same numbers, more memory above 4096 tokens);
- eager ``LiteMLA`` resizes the QT-ViT positional embedding only when the token map differs from its stored
  14x14/7x7; an export at exactly that size would drop the resize, so the trace input is grown by 32 px until no map
  matches (bicubic resizing to the same size is the identity, so 224 px inputs still give the same numbers). The
  TorchScript trace takes LiteMLA's channel-major path, whose resize test stays in the graph, so the growth matters
  for the ``--dynamo`` exporter; it is kept for both, and costs one forward pass.

The resize itself is written as two small interpolation matrices, the identity resized to the map's shape
(``layers.resize``, exact), so the graph holds two MatMuls there instead of a dynamic bicubic ``Resize`` of the whole
embedding, which onnxruntime runs slowly (it made qtvit_1 2-3x slower than efficientvit_b1 at 512-1024 px). Each
stage builds its matrices once for all its blocks (two small Resizes per stage), and each block's resize sits in an
ONNX ``If`` that returns the stored embedding when the map has its size (``layers.resize.resize_embedding``): at
224 px, where the maps have the stored sizes, qtvit_1 ran ~5 % faster in onnxruntime than with the matrices applied.

A traced attention layer is channel-major (``LiteMLA``, ``AttentionKernel.forward_channels_first``): q, k and v stay
slices of the qkv map, so onnxruntime's optimised graph has no Transpose (1.18-1.21x faster for qtvit_1,
1.05-1.11x for efficientvit_b1 at 224-1024 px).

Which CPU path to use, measured (docs/deployment.md): this ONNX graph in onnxruntime for deployment at any
size (the fastest at 224-1024 px; ``onnx_session(path, spinning=False)`` on a CPU shared with other jobs); in
PyTorch, ``qtvit.tools.bench.paths.jit_form(model, example)`` (the traced, frozen inference form; any size) or
``inference_form(model, (h, w))`` for one size; ``--quantize int8`` for a smaller file, not for speed here.

``--quantize int8`` writes an onnxruntime static-quantized graph (QLinearConv; convs and classifier in INT8, the
attention core in fp32), calibrated on ``--calibration-images`` training images of ``--calibration-data`` (all of
them when the split is smaller; the fp32 graph in between is a hidden temporary file, removed however the command
ends);
``--evaluate`` prints the top-1 of the fp32 and INT8 graphs on its evaluation split and their onnxruntime time.
On the 2-core Xeon the INT8 graph is slower than the fp32 one (0.67-0.83x for the main job's qtvit_pico, about 0.8x for
qtvit_1 at 512 px, under load): onnxruntime's fp32 convs use blocked NCHWc kernels, its INT8 convs do not.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from .._io import atomic_write, check_output, private_temp
from .._utils import did_you_mean, interrupts_kept, parse_size
from ..layers.norm import reestimate_bn
from ..models.inference import inference_form  # re-exported: the inference form lives with the models
from ..options import Bound, bounded, image_size, positive_int  # checked numbers: a bad value is exit code 2
from .onnx_io import INPUT_NAME, OUTPUT_NAME, check_onnx, onnx_session, onnxruntime_latency  # re-exported
from .onnx_io import in_chans_of as _in_chans, output_axes, output_names
from .parts import model_part, split_part

__all__ = ["export_onnx", "quantize_onnx", "calibration_batches", "onnx_top1", "check_onnx", "calibrate_batchnorm",
           "onnx_session", "onnxruntime_latency", "inference_form", "traceable_copy",
           "add_export_parser", "FORMATS"]

FORMATS = ("onnx",)
DEFAULT_OPSET = 17
MAX_OPSET, MAX_OPSET_DYNAMO = 20, 23  # torch.onnx's TorchScript exporter and its torch.export-based one
MAX_TRACE_BATCH = 4096  # the dynamo exporter's batch bound; a larger trace batch is a typo, not a need


def _pos_embed_matches(model: nn.Module, size: tuple[int, int], in_chans: int) -> bool:
    """True if some positional embedding would be used without resizing for an input of ``size``."""
    hits: list[bool] = []

    def hook(module: nn.Module, args: tuple) -> None:
        pe = getattr(module, "pos_embed", None)
        if isinstance(pe, torch.Tensor) and pe.dim() == 4 and getattr(module, "pos_embed_cache", None) is None:
            hits.append(tuple(pe.shape[-2:]) == tuple(args[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(getattr(m, "pos_embed", None), torch.Tensor)]
    if not handles:
        return False
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *size))
    finally:
        for h in handles:
            h.remove()
    return any(hits)


def traceable_copy(model: nn.Module) -> nn.Module:
    """An eval copy whose attention kernels run in one chunk, so a traced graph holds for any token count (the
    loop over 4096-token chunks would be frozen by the trace). Shared by the ONNX export and ``bench.paths.jit_form``."""
    from ..attention import AttentionKernel

    traced = copy.deepcopy(model).eval()
    for m in traced.modules():
        if isinstance(m, AttentionKernel):
            m.chunk_size = None
    return traced


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int | Sequence[int] = (224, 224),
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    *,
    batch_size: int = 1,
    dynamo: bool = False,
) -> Path:
    """Write ``model`` (in eval mode) as an ONNX graph ``input`` (B, C, H, W) -> ``logits`` (a dict of maps: one
    output per key, ``tools.onnx_io``); returns the path.

    Args:
        model: any qtvit classifier or segmentation model, or a detector's backbone+FPN (``model.backbone``); a fused
            model with cached positional embeddings needs ``dynamic=False``.
        path: the .onnx file to write (parent folders are created; an existing file is replaced atomically).
        input_size: (H, W) or one side: the traced size, and the only size accepted when ``dynamic=False``.
        dynamic: free batch, height and width axes.
        opset: ONNX opset (>= 11 for the bicubic resize of the QT-ViT positional embedding; 11, 13 and 17 tested;
            the dynamo exporter uses at least 18).
        batch_size: the traced batch size (the only one accepted when ``dynamic=False``).
        dynamo: use the torch.export-based exporter instead of the TorchScript one.
    """
    h, w = parse_size(input_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if opset < 11:
        raise ValueError(f"opset {opset} is too old: the QT-ViT positional embedding's bicubic Resize needs >= 11")
    top = MAX_OPSET_DYNAMO if dynamo else MAX_OPSET
    if opset > top:
        more = "" if dynamo else f"; the torch.export-based one (--dynamo) up to {MAX_OPSET_DYNAMO}"
        raise ValueError(f"opset {opset}: the {'torch.export' if dynamo else 'TorchScript'}-based exporter writes "
                         f"opsets up to {top}{more}; pass a lower --opset (default {DEFAULT_OPSET})")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the ONNX file to write, e.g. {path / 'model.onnx'}")
    in_chans = _in_chans(model)
    traced = traceable_copy(model)
    if dynamic:
        if any(getattr(m, "pos_embed_cache", None) is not None for m in traced.modules()):
            raise ValueError("this model was fused for one input size (cached positional embeddings); export it "
                             "with dynamic=False at that size, or fuse with input_size=None for a dynamic graph")
        for _ in range(8):  # 32 px more changes every map of stride <= 32
            if not _pos_embed_matches(traced, (h, w), in_chans):
                break
            h, w = h + 32, w + 32
    x = torch.zeros(batch_size, in_chans, h, w)
    with torch.no_grad():
        out = traced(x)  # the outputs' names and free axes
    # Written beside the target and renamed into place: a failed export leaves no partial file behind.
    return atomic_write(path, lambda tmp: _write_onnx(traced, x, tmp, dynamic, opset, dynamo, out))


def _write_onnx(traced: nn.Module, x: torch.Tensor, dst: str, dynamic: bool, opset: int, dynamo: bool,
                out: object) -> None:
    with warnings.catch_warnings():
        # The tracer warns about every Python shape check of the model code; they hold for every size (see above).
        warnings.simplefilter("ignore")
        if dynamo:
            _write_dynamo(traced, x, dst, dynamic, opset, output_names(out))
        else:
            axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **output_axes(out)} if dynamic else None
            torch.onnx.export(traced, (x,), dst, input_names=[INPUT_NAME], output_names=output_names(out),
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def _write_dynamo(traced: nn.Module, x: torch.Tensor, dst: str, dynamic: bool, opset: int,
                  names: Sequence[str]) -> None:
    """The torch.export-based export: weights embedded (one portable file, no ``.data`` beside a temporary name),
    Ctrl-C honoured (something inside the exporter swallows KeyboardInterrupt: measured, it then wrote the file
    and exited 0), and a graph whose height/width came out fixed refused rather than called dynamic."""
    from torch.export import Dim

    shapes = {0: Dim("batch", min=1, max=MAX_TRACE_BATCH), 2: Dim("height", min=16, max=8192),
              3: Dim("width", min=16, max=8192)} if dynamic else None
    arg = next(iter(inspect.signature(traced.forward).parameters))
    with interrupts_kept():
        torch.onnx.export(traced, (x,), dst, input_names=[INPUT_NAME], output_names=list(names),
                          dynamic_shapes={arg: shapes} if dynamic else None, opset_version=max(opset, 18),
                          dynamo=True, external_data=False, verbose=False)
    dims = _graph_input_dims(dst) if dynamic else []
    fixed = [axis for axis, d in zip(("batch", None, "height", "width"), dims) if axis and not isinstance(d, str)]
    if fixed:
        raise ValueError(f"the torch.export-based exporter (--dynamo) fixed the {' and '.join(fixed)} of this model "
                         "(its code specialises on the traced input size): export without --dynamo (the "
                         "TorchScript exporter keeps batch, height and width free), or with --static for one size")


def _graph_input_dims(path: str | Path) -> list[int | str]:
    """The ONNX graph input's dimensions: a name where free, a number where fixed."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, input_size: int | Sequence[int] = 64, *, batch_size: int = 4,
                        seed: int = 0, pos_embed_std: float = 1.0) -> nn.Module:
    """Give a randomly initialised model non-trivial outputs, for export checks: BatchNorm running statistics from
    one random batch (``qtvit.layers.norm.reestimate_bn``, so activations stay O(1) instead of vanishing through the
    small init) and random positional embeddings (zeros at init, which would hide their resize). In place; returns
    the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("pos_embed"):
            p.copy_(torch.randn(p.shape, generator=g) * pos_embed_std)
    x = torch.randn(batch_size, _in_chans(model), *parse_size(input_size), generator=g)
    reestimate_bn(model, [x], num_images=batch_size)
    return model.eval()


def calibration_batches(model: nn.Module, data: str | Path | None = None, *, images: int = 256, batch_size: int = 32,
                        train: bool = True) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (images, labels) batches of ``data`` (``qtvit.data.open_dataset``: None = Fashion-MNIST) at the
    model's eval size and statistics: the first ``images`` of the training split (``train=True``, for INT8
    calibration) or all of the evaluation split (``train=False``, ``images`` ignored, for the top-1 check)."""
    from ..data import Shard, build_batches, open_dataset
    from ..data.transforms import normalize, resolve_data_config

    info = open_dataset(data)
    cfg = resolve_data_config(model, dataset_mean=info.mean, dataset_std=info.std)
    kw = dict(train=train, data_cfg=cfg, limit=images if train else None, hflip=False, padding=0,
              shard=Shard(workers=0))
    if train:  # training batches must be full: a split smaller than `images` is calibrated on whole
        batch_size = min(batch_size, build_batches(info, batch_size=1, **kw).num_samples)
    batches = build_batches(info, batch_size=batch_size, **kw)
    for x, y in batches.iterate(0):
        yield normalize(x, cfg.mean, cfg.std), y


def _inline_identity_initializers(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` with every ``Identity(initializer)`` replaced by an initializer of its own: the exporter shares
    equal constants (e.g. the zero biases of a fresh model) through Identity nodes, and onnxruntime's quantizer
    only quantizes a conv bias that is an initializer."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(inits[node.input[0]])
        copy_.name = node.output[0]
        graph.initializer.append(copy_)
        graph.node.remove(node)
    onnx.save(model, str(dst))


def quantize_onnx(src: str | Path, dst: str | Path, calibration: Iterable[torch.Tensor], *,
                  op_types: Sequence[str] = ("Conv", "Gemm")) -> Path:
    """INT8 copy of the ONNX graph ``src`` (onnxruntime static quantization, QLinearConv operators: 1.3x faster here
    than the QDQ format at 512 px; per-channel int8 weights, uint8 activations calibrated by min/max on the
    ``calibration`` batches). Only ``op_types`` are quantized: the
    convolutions and the classifier; the attention core (norms, the kernel's products and division) stays fp32,
    where its row normalisation would lose most from 8 bits. Free batch, height and width are kept."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x.detach().float().contiguous().numpy()}

    def write(tmp: str) -> None:
        _inline_identity_initializers(src, tmp)
        quantize_static(tmp, tmp, Reader(), quant_format=QuantFormat.QOperator, op_types_to_quantize=list(op_types),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    return atomic_write(dst, write)


def onnx_top1(sessions: dict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple]:
    """{name: (top-1 in %, images, seconds in onnxruntime)} of classifier sessions over (images, labels) batches;
    the sessions take each batch in turn, so load drifts hit them alike."""
    from .._utils import progress_bar
    correct, seconds, total = dict.fromkeys(sessions, 0), dict.fromkeys(sessions, 0.0), 0
    for x, y in progress_bar(batches, desc="evaluating in onnxruntime"):
        for name, sess in sessions.items():
            t0 = time.perf_counter()
            out = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            seconds[name] += time.perf_counter() - t0
            correct[name] += int((torch.from_numpy(out).argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("no evaluation images: check --calibration-data")
    return {k: (100.0 * correct[k] / total, total, seconds[k]) for k in sessions}


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``qtvit export MODEL --format onnx ...``."""
    p = subparsers.add_parser("export", help="export a model to ONNX (dynamic batch, height and width)",
                              description="Export a model (with --checkpoint or --pretrained weights) to ONNX with "
                                          "free batch, height and width; --check compares onnxruntime with PyTorch, "
                                          "--quantize int8 quantizes it. Guide: docs/deployment.md")
    p.add_argument("model", help="a name from qtvit.list_models(), or a detector's backbone+FPN: NAME.backbone "
                                 "(e.g. maskrcnn_qtvit_1.backbone; one output per pyramid level)")
    p.add_argument("--format", default="onnx", help="export format (only 'onnx')")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights to load (any format create_model reads)")
    p.add_argument("--pretrained", action="store_true", help="load the official weights")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of the random-weight model (a checkpoint's own count is kept; a different one is "
                        "refused)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="output file, or a folder to write MODEL.onnx in (default: MODEL.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--img-size", type=image_size, nargs="+", default=[224], metavar="S",
                   help="trace size: one side or H W (the only size accepted with --static)")
    p.add_argument("--batch-size", type=bounded(int, Bound(1, MAX_TRACE_BATCH)), default=1,
                   help="trace batch size (fixed with --static)")
    p.add_argument("--static", action="store_true", help="fixed batch and size instead of dynamic axes")
    p.add_argument("--fuse", action="store_true", help="export the inference form (BatchNorms folded)")
    p.add_argument("--opset", type=bounded(int, Bound(11, MAX_OPSET_DYNAMO)), default=DEFAULT_OPSET,
                   help=f"ONNX opset: 11-{MAX_OPSET} (--dynamo: 18-{MAX_OPSET_DYNAMO}, lower values give 18)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="write an INT8 graph (onnxruntime static quantization of the convs and the classifier; "
                        "the attention core stays fp32), calibrated on --calibration-data")
    p.add_argument("--calibration-data", default=None, metavar="DATA",
                   help="dataset for --quantize (a --data value of qtvit train; default Fashion-MNIST)")
    p.add_argument("--calibration-images", type=positive_int, default=256, help="training images to calibrate on")
    p.add_argument("--evaluate", action="store_true",
                   help="with --quantize: top-1 and onnxruntime time of the fp32 and INT8 graphs on the evaluation "
                        "split of --calibration-data")
    p.add_argument("--check", action="store_true",
                   help="compare onnxruntime with PyTorch (within 1e-4 + 1e-5 x the largest output) at the trace "
                        "size and (dynamic graphs) two non-square ones, one not a multiple of 32")
    p.set_defaults(func=run_export_cli)


def _output_path(args: argparse.Namespace) -> Path:
    """``--output`` (default ``MODEL.onnx``; a folder gets ``<folder>/MODEL.onnx``), refusing to replace a file."""
    out = args.output or Path(f"{args.model}.onnx")
    if out.is_dir():
        out = out / f"{args.model}.onnx"
    return check_output(out, overwrite=args.overwrite)


def _load_model(args: argparse.Namespace) -> nn.Module:
    """The model to export; loaded weights must fill its classifier (one of another size would be dropped, and the
    graph would carry a random head under the checkpoint's name)."""
    from .. import create_model

    name, part = split_part(args.model)
    model = create_model(name, pretrained=args.pretrained, checkpoint_path=args.checkpoint,
                         num_classes=args.num_classes).eval()
    report = getattr(model, "load_report", None)
    if report is not None and report.dropped:
        given = f"--num-classes {args.num_classes}" if args.num_classes else \
            f"the model's default ({model.num_classes})"
        raise ValueError(f"the weights' classifier has another number of classes than {given}, so the exported "
                         "classifier would be random: pass --num-classes with the checkpoint's class count")
    return model_part(model, part, args.model)


def run_export_cli(args: argparse.Namespace) -> int:
    from .. import list_models

    if args.format.lower() not in FORMATS:
        raise ValueError(f"unknown format {args.format!r}; supported: {', '.join(FORMATS)}")
    name, part = split_part(args.model)
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, list_models())} (qtvit.list_models() lists them)")
    if part and (args.quantize or args.evaluate):
        raise ValueError(f"--quantize/--evaluate calibrate and score a classifier; export {args.model} in fp32")
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist; give a checkpoint file or run folder")
    try:
        h, w = parse_size(args.img_size)
    except ValueError as e:
        raise ValueError(f"--img-size: {e}") from None
    out = _output_path(args)
    model = _load_model(args)
    if args.fuse:
        model = inference_form(model, (h, w) if args.static else None)
    if args.quantize:
        # The fp32 graph is an intermediate: a private name beside the output, removed however this ends.
        with private_temp(out, suffix=".fp32.onnx") as fp32:
            _export(model, fp32, out, (h, w), args)
            if args.evaluate:
                _print_top1(model, fp32, out, args.calibration_data)
        return 0
    _export(model, out, out, (h, w), args)
    if args.check:
        _print_check(model, out, h, w, args)
    return 0


def _export(model: nn.Module, fp32: Path, out: Path, size: tuple[int, int], args: argparse.Namespace) -> None:
    """Write the fp32 graph (and with --quantize the INT8 one at ``out``) and say what was written."""
    t0 = time.perf_counter()
    export_onnx(model, fp32, size, dynamic=not args.static, opset=args.opset, batch_size=args.batch_size,
                dynamo=args.dynamo)
    if args.quantize:
        calib = calibration_batches(model, args.calibration_data, images=args.calibration_images)
        quantize_onnx(fp32, out, (x for x, _ in calib))
    kind = "static" if args.static else "dynamic batch/height/width"
    opset = max(args.opset, 18) if args.dynamo else args.opset
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {kind}, opset {opset}"
          f"{', ' + args.quantize if args.quantize else ''}) in {time.perf_counter() - t0:.1f} s")


def _print_top1(model: nn.Module, fp32: Path, int8: Path, data: str | None) -> None:
    """Top-1 and onnxruntime time of both graphs on the evaluation split, each batch through both in turn."""
    results = onnx_top1({"fp32": onnx_session(fp32), "int8": onnx_session(int8)},
                        calibration_batches(model, data, batch_size=250, train=False))
    (a, n, ta), (b, _, tb) = results["fp32"], results["int8"]
    print(f"top-1 on {n} evaluation images: fp32 {a:.2f} %, int8 {b:.2f} % (change {b - a:+.2f} points); "
          f"onnxruntime time fp32 {ta:.2f} s, int8 {tb:.2f} s (int8 speed-up {ta / tb:.2f}x, batches of 250)")


def _print_check(model: nn.Module, out: Path, h: int, w: int, args: argparse.Namespace) -> None:
    sizes = [(h, w)] if args.static else [(h, w), (h, w + 32 * max(1, w // 64)), (h - h // 8 + 5, w + w // 4 + 9)]
    rows = check_onnx(model, out, sizes, batch_size=args.batch_size if args.static else 2, rtol=1e-5)
    for r in rows:
        print(f"check {r['batch']}x{r['size'][0]}x{r['size'][1]}: max |onnxruntime - torch| = "
              f"{r['max_abs_diff']:.2e} (<= {1e-4 + 1e-5 * r['max_abs_output']:.1e}), max |output| "
              f"{r['max_abs_output']:.2g}")
    if max(r["max_abs_output"] for r in rows) < 1e-3:
        print("warning: the outputs are ~0 (random initial weights), so this check says little; export trained "
              "weights (--checkpoint/--pretrained) to check them")
