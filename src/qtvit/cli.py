"""The ``qtvit`` command: ``qtvit train | validate | predict`` (and whatever COMMANDS lists).

Thin on purpose: each subcommand parses its options and calls a library function that the tests call too.
To add a subcommand, write ``add_<cmd>_parser(subparsers)`` in your module (it adds a parser with
``set_defaults(func=<callable taking the argparse Namespace and returning an exit code>)``) and list it in COMMANDS.
Modules are imported lazily, so a command whose optional extra is missing does not break the others.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

from ._utils import to_json
# bounded and the other checked number types stay importable from here for the other commands' parsers
from .options import (AMP_MODES, OptionError, add_options, bounded, device_arg, fraction_in,  # noqa: F401
                      image_size, positive_int, worker_count)

# (module, function) of every subcommand, in the order `qtvit --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("qtvit.cli", "add_train_parser"),
    ("qtvit.cli", "add_validate_parser"),
    ("qtvit.cli", "add_predict_parser"),
    ("qtvit.tools.bench", "add_benchmark_parser"),
    ("qtvit.tools.export", "add_export_parser"),
    ("qtvit.tools.figures", "add_figure_parser"),
    ("qtvit.tools.study", "add_study_parser"),
    ("qtvit.cli_tools", "add_list_models_parser"),
    ("qtvit.cli_tools", "add_build_ext_parser"),
]


# ----------------------------------------------------------------------------------------------- train
def add_train_parser(subparsers) -> None:
    """``qtvit train``: one flag per TrainConfig field, as declared in train/config.py (defaults from --recipe, then
    the dataclass); every number checked against its declared bound as it is parsed."""
    from .train.recipes import RECIPES, TrainConfig
    p = subparsers.add_parser(
        "train", help="train a model (Fashion-MNIST by default; --task segmentation or detection: the scenes)",
        description="Train a model. Options left out take the --recipe's values, then the defaults shown. "
                    "The run folder (weights, metrics.csv, summary.json) is <--output>/<--name>. Fine-tune with "
                    "--pretrained or --initial-checkpoint. Many processes: torchrun --nproc_per_node=N -m qtvit "
                    "train ... Guide: docs/training.md")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a preset of options: the official recipes, fashion-mnist (the main job's), seg-scenes and "
                        "det-scenes (docs/training.md) (default: none, the defaults below)")
    add_options(p, TrainConfig)
    p.set_defaults(func=run_train)


# Options that belong to one invocation, not to the run: a resumed run does not inherit them from args.json.
_NOT_RESUMED = ("max_steps", "resume")


def config_from_args(args: argparse.Namespace):
    """A TrainConfig from parsed options: the run's saved args.json when resuming, else the recipe; then the
    options given on the command line."""
    from .train.recipes import TrainConfig, make_config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and k != "recipe" and v is not None}
    defaults = TrainConfig()  # options that take two values: tuples in TrainConfig, lists in args.json and argparse
    pairs = [k for k in names if isinstance(getattr(defaults, k), tuple)]
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    for k in pairs:
        if k in given:
            given[k] = tuple(given[k])
    if args.resume:
        from .train.setup import resumed_run_dir
        saved_args = resumed_run_dir(args.resume)[0] / "args.json"
        if not saved_args.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: the run folder has no args.json; pass the run folder "
                                    "that `qtvit train` printed")
        saved = {k: v for k, v in json.loads(saved_args.read_text()).items() if k in names and k not in _NOT_RESUMED}
        for k in pairs:
            if k in saved:  # runs saved before an option existed take its default
                saved[k] = tuple(saved[k])
        return TrainConfig(**{**saved, **given})
    return make_config(args.recipe, **given)


def run_train(args: argparse.Namespace) -> int:
    from .train import train
    train(config_from_args(args), callbacks=getattr(args, "callbacks", ()))
    return 0


# ----------------------------------------------------------------------------------------------- validate, predict
def _saved_model_flags(p) -> None:
    p.add_argument("--img-size", type=image_size, help="input size (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=fraction_in(0, 1), help="centre-crop ratio in (0, 1] (default: the "
                                                               "checkpoint's)")
    p.add_argument("--model", metavar="NAME", help="model name (default: the checkpoint's)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", metavar="PATH", help="weights file (.safetensors, .pt), checkpoint folder or "
                                                              "run folder")
    weights.add_argument("--pretrained", action="store_true", help="the official weights of --model (qtvit "
                                                                   "list-models --pretrained)")


def add_validate_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="top-1/top-5 (or mIoU, or COCO AP) of a checkpoint on a dataset",
                              description="Top-1 and top-5 accuracy (micro) of a classification checkpoint on a "
                                          "dataset's eval split, with the model's eval protocol; mIoU, mAcc and aAcc "
                                          "(per-class IoU with --json) of a segmentation checkpoint, with the "
                                          "dataset's protocol (--img-size: resize the short side to it); COCO's box "
                                          "(and mask) AP and AR of a detection checkpoint (per-class AP with --json; "
                                          "--img-size: the short side the detector resizes to).")
    _saved_model_flags(p)
    p.add_argument("--data", "--data-dir", dest="data", help="'fashion-mnist' (default), idx folder, or ImageNet-style "
                                                             "folder (its val/); segmentation: 'fashion-mnist-scenes' "
                                                             "(default), ADE20K, Cityscapes or image/mask folder; "
                                                             "detection: 'scenes' (default), a COCO 2017 folder (its "
                                                             "val2017) or a COCO-format folder")
    p.add_argument("-b", "--batch-size", type=positive_int, default=None,
                   help="images per batch (default 256 for a classifier, 8 for a segmentation model, 4 for a "
                        "detector; segmentation images of their own sizes, ADE20K's or a folder's, go one at a time)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=AMP_MODES, default="none", help="mixed precision")
    p.add_argument("--limit", type=positive_int, help="only the first N images")
    p.add_argument("--workers", type=worker_count, default=4, help="data loader workers (image folders)")
    p.add_argument("--flip", action="store_true", help="segmentation: average each image's logits with its mirror "
                                                      "image's (flip test; twice the time)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="R",
                   help="segmentation: multi-scale test, each image at these ratios of the evaluation size (e.g. "
                        "0.667 1 1.333; list 1 to keep the plain view), the class probabilities averaged "
                        "(default 1: single scale)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from .train import validate
    r = validate(args.checkpoint, args.model, args.data, batch_size=args.batch_size, img_size=args.img_size,
                 crop_pct=args.crop_pct, device=args.device, amp=args.amp, limit=args.limit, workers=args.workers,
                 flip=args.flip, scales=tuple(args.scales))
    from .train.distributed import launch_rank
    if launch_rank() != 0:  # under torchrun every process has the gathered result: one prints it
        return 0
    if args.json:
        print(to_json(r))
        return 0
    from .tasks import get_task
    scores = get_task(r["task"]).describe(r)
    loss = "" if r["loss"] is None or r["loss"] != r["loss"] else f"  loss {r['loss']:.4f}"  # detectors give none
    print(f"{r['model']} ({r['checkpoint']}): {scores}{loss}  on {r['images']} images"
          + (f" ({r['skipped_images']} unreadable, skipped)" if r["skipped_images"] else ""))
    return 0


def add_predict_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-5 classes (or segmentation masks, or detections) of images",
                              description="Print the top classes with probabilities for each image; with a "
                                          "segmentation checkpoint, write each image's colour mask "
                                          "(<name>_mask.png, a palette PNG whose values are the classes) and overlay "
                                          "(<name>_overlay.png) into --output-dir; with a detection checkpoint, "
                                          "draw each image's boxes, class names, scores and masks "
                                          "(<name>_detections.png) and write all detections as COCO results "
                                          "(detections.json) into --output-dir.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _saved_model_flags(p)
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per image")
    p.add_argument("--output-dir", help="segmentation and detection: the folder the mask and overlay PNGs (the "
                                        "drawn detections and detections.json) are written to")
    p.add_argument("--overwrite", action="store_true", help="segmentation and detection: replace files already in "
                                                            "--output-dir")
    p.add_argument("-b", "--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from .train import iter_predictions
    results = iter_predictions(args.images, args.checkpoint, args.model, topk=args.topk, device=args.device,
                               batch_size=args.batch_size, img_size=args.img_size, crop_pct=args.crop_pct,
                               output_dir=args.output_dir, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(list(results)))
        return 0
    for r in results:  # printed as they come: a long list shows progress
        print(r["image"])
        if "detections" in r:  # detection
            print(f"  drawn {r['drawn']}, {len(r['detections'])} detection(s) (COCO results: {r['results']})")
            for d in r["detections"][:args.topk]:
                print(f"  {100 * d['score']:6.2f}%  {d['class']}  box {d['box']}")
            continue
        if "mask" in r:  # segmentation
            print(f"  mask {r['mask']}, overlay {r['overlay']} ({r['size'][0]} x {r['size'][1]})")
            for name, share in list(r["classes"].items())[:args.topk]:
                print(f"  {100 * share:6.2f}%  {name}")
            continue
        for name, p in r["top"]:
            print(f"  {100 * p:6.2f}%  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``qtvit`` parser with every subcommand of COMMANDS."""
    from . import __version__
    parser = argparse.ArgumentParser(prog="qtvit", description="QT-ViT, EfficientViT and L2ViT: train, validate, "
                                                               "predict, benchmark, export.")
    parser.add_argument("--version", action="version", version=f"qtvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    unavailable = []
    for module, fn in COMMANDS:
        try:
            add = getattr(importlib.import_module(module), fn)
        except ImportError as e:  # an optional extra is missing: the other commands still work
            unavailable.append(f"{fn.removeprefix('add_').removesuffix('_parser')} ({e})")
            continue
        add(sub)
    if unavailable:
        parser.epilog = "unavailable here: " + "; ".join(unavailable) + ". Install qtvit[all] for every command."
    _show_defaults(parser)
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings or default in (None, False, argparse.SUPPRESS) \
                or text == argparse.SUPPRESS or isinstance(action, argparse._VersionAction):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def main(argv: list[str] | None = None, *, callbacks=()) -> int:
    """Entry point of the ``qtvit`` console script: exit code 0, 1 for a problem with the input (its message says
    what to do), 2 for a usage error, 130 when interrupted. `callbacks`: ``qtvit.train.Callback`` objects a
    ``train`` command's run calls (for programs and tests that drive the command line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.callbacks = list(callbacks)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print(f"\nqtvit {args.command}: {_interrupted(e)}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # CheckpointError and FileNotFoundError included
        print(f"qtvit {args.command}: error: {e.as_flags() if isinstance(e, OptionError) else e}", file=sys.stderr)
        return 1


def _interrupted(e: KeyboardInterrupt) -> str:
    """What an interrupted command leaves: advise --resume only where a checkpoint exists to resume from."""
    checkpoint, run_dir = getattr(e, "checkpoint", None), getattr(e, "run_dir", None)
    if checkpoint is not None:
        return f"interrupted; checkpoint {checkpoint} is saved: `qtvit train --resume {run_dir}` continues from it"
    if hasattr(e, "checkpoint"):
        return "interrupted before the first checkpoint: nothing was saved, so start the run again"
    return "interrupted"


if __name__ == "__main__":
    sys.exit(main())
