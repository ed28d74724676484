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
from pathlib import Path

# (module, function) of every subcommand, in the order `qtvit --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("qtvit.cli", "add_train_parser"),
    ("qtvit.cli", "add_validate_parser"),
    ("qtvit.cli", "add_predict_parser"),
    ("qtvit.bench", "add_benchmark_parser"),
    ("qtvit.export", "add_export_parser"),
    ("qtvit.viz", "add_figure_parser"),
]

_HELP = {
    "model": "model name (qtvit.list_models())", "data": "'fashion-mnist' (default), a folder of Fashion-MNIST idx "
    "files, or an ImageNet-style folder with train/ and val/", "output": "parent folder of run folders",
    "name": "run folder name (default <model>-<recipe>-<time>)", "num_classes": "classes (default: the dataset's)",
    "img_size": "input size (default: the model's)", "crop_pct": "eval crop ratio (default: the model's)",
    "epochs": "total epochs, warm-up included", "warmup_epochs": "linear warm-up epochs (fractions allowed)",
    "batch_size": "batch per process", "eval_batch_size": "eval batch per process", "lr": "peak learning rate",
    "scale_lr_by_world": "multiply --lr by the number of processes (official EfficientViT rule)",
    "min_lr": "final learning rate of the cosine", "warmup_lr": "learning rate at step 0",
    "weight_decay": "AdamW weight decay (none on norms and biases)", "betas": "AdamW betas",
    "opt_eps": "AdamW eps", "clip_grad": "clip the gradient norm to this", "smoothing": "label smoothing",
    "bce": "BCE-with-logits loss instead of cross-entropy", "mixup": "mixup Beta alpha (0 = off)",
    "cutmix": "cutmix Beta alpha (0 = off)", "randaug_n": "RandAugment ops per image (0 = off)",
    "randaug_m": "RandAugment magnitude", "reprob": "random erasing probability",
    "rrc_scale": "random resized crop area range (image folders)", "padding": "random-crop padding (Fashion-MNIST)",
    "hflip": "random horizontal flips", "drop_path": "drop path rate",
    "drop_path_schedule": "constant, or linear in training progress", "model_ema": "keep an EMA of the weights",
    "model_ema_decay": "EMA decay", "model_ema_warmup_steps": "EMA warm-up: decay*(1-exp(-step/N)); 0 = none",
    "bn_reestimate_images": "re-estimate BN statistics on this many training images before eval (0 = off)",
    "bn_reestimate_batch": "batch for the BN re-estimation", "amp": "mixed precision: none, bf16 or fp16",
    "channels_last": "channels-last memory format", "sync_bn": "SyncBatchNorm across processes (CUDA)",
    "device": "auto, cpu, cuda or cuda:N", "threads": "torch threads per process",
    "workers": "data loader workers (image folders)", "seed": "random seed",
    "checkpoint_every_steps": "also checkpoint every N steps (0: per epoch only)",
    "keep_checkpoints": "checkpoints to keep", "resume": "continue the run in this run or checkpoint folder",
    "eval_every_epochs": "evaluate every N epochs", "limit_train": "use only the first N training images",
    "limit_eval": "use only the first N eval images", "max_steps": "stop after N steps (smoke runs)",
    "progress": "progress bar", "model_kwargs": "extra model constructor arguments, KEY=VALUE (JSON values)",
}


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def _float_or_none(text: str):
    return None if text.lower() in ("none", "null") else float(text)


def add_train_parser(subparsers) -> None:
    """``qtvit train``: one flag per TrainConfig field (defaults from --recipe, then the dataclass)."""
    from .train.recipes import RECIPES, TrainConfig
    p = subparsers.add_parser(
        "train", help="train a model (Fashion-MNIST by default)",
        description="Train a model. Options left out take the --recipe's values, then the defaults shown. "
                    "Many processes: torchrun --nproc_per_node=N -m qtvit train ...")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="preset of the official recipes (see qtvit.train.recipes)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = _HELP.get(f.name, "")
        kw = dict(dest=f.name, default=None, help=text if "default" in text else f"{text} (default: {default})")
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] = _HELP.get(f.name, "")
        elif isinstance(default, tuple):
            kw.update(nargs=2, type=float, metavar=("A", "B"))
        elif isinstance(default, dict):
            kw.update(nargs="*", type=_kv, metavar="KEY=VALUE")
        elif f.name in ("clip_grad", "crop_pct"):
            kw["type"] = _float_or_none
        elif isinstance(default, float):
            kw["type"] = float
        elif isinstance(default, int) or f.name in ("num_classes", "img_size", "threads", "limit_train",
                                                     "limit_eval", "max_steps"):
            kw["type"] = int
        names = [flag] + (["-b"] if f.name == "batch_size" else []) + (["--data-dir"] if f.name == "data" else [])
        if f.name == "amp":
            kw["choices"] = ["none", "bf16", "fp16"]
        p.add_argument(*names, **kw)
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace):
    """A TrainConfig from parsed options: the run's saved args.json when resuming, else the recipe; then the
    options given on the command line."""
    from .train.recipes import TrainConfig, make_config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and k != "recipe" and v is not None}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    for k in ("betas", "rrc_scale"):
        if k in given:
            given[k] = tuple(given[k])
    if args.resume:
        from .train.checkpoint import latest_checkpoint
        ckpt = latest_checkpoint(args.resume)
        saved_args = None
        if ckpt is not None:
            run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else Path(args.resume)
            saved_args = run / "args.json"
        if saved_args is None or not saved_args.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no checkpoint with its args.json there; pass the run "
                                    "folder that `qtvit train` printed")
        saved = {k: v for k, v in json.loads(saved_args.read_text()).items() if k in names}
        for k in ("betas", "rrc_scale"):
            saved[k] = tuple(saved[k])
        return TrainConfig(**{**saved, **given})
    return make_config(args.recipe, **given)


def run_train(args: argparse.Namespace) -> int:
    from .train import train
    train(config_from_args(args))
    return 0


def add_validate_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="top-1/top-5 of a checkpoint on a dataset",
                              description="Top-1 and top-5 accuracy (micro) of a checkpoint on a dataset's "
                                          "eval split, with the model's eval protocol.")
    p.add_argument("--checkpoint", required=True, help="weights .safetensors, checkpoint folder or run folder")
    p.add_argument("--model", help="model name (default: the checkpoint's)")
    p.add_argument("--data", "--data-dir", dest="data", help="'fashion-mnist' (default), idx folder, or ImageNet-style "
                                                             "folder (its val/)")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--img-size", type=int)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from .train import validate
    r = validate(args.checkpoint, args.model, args.data, args.batch_size, args.img_size, args.crop_pct,
                 args.device, args.amp, args.limit, args.workers)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} ({r['checkpoint']}): top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss "
              f"{r['loss']:.4f}  on {r['images']} images" + (f" ({r['skipped_images']} unreadable, skipped)"
                                                              if r["skipped_images"] else ""))
    return 0


def add_predict_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-5 classes of images",
                              description="Print the top classes with probabilities for each image.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--checkpoint", required=True, help="weights .safetensors, checkpoint folder or run folder")
    p.add_argument("--model", help="model name (default: the checkpoint's)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from .train import predict
    results = predict(args.images, args.checkpoint, args.model, args.topk, args.device)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(r["image"])
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qtvit`` console script: exit code 0, 1 for a problem with the input (its message says
    what to do), 2 for a usage error, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train.checkpoint import CheckpointError
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nqtvit: interrupted; `qtvit train --resume RUN_FOLDER` continues from the last checkpoint",
              file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"qtvit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
