"""Every training option, declared once: its default, help, accepted values and flag (``qtvit.options.option``).
``qtvit train``'s flags, ``check_config`` and the option table of docs/training.md are derived from TrainConfig.

To add an option, add one field here (and use ``cfg.<name>`` where it acts); then regenerate the docs table with
``PYTHONPATH=src python scripts/options_table.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..options import AMP_MODES, CPU_HINT, IMG_SIZE, MAX_WORKERS, WORKERS, Bound, device_arg, option
from ..tasks import TASKS as _TASK_CLASSES

__all__ = ["TASKS", "SCHEDULES", "TrainConfig", "check_run_name"]

TASKS = tuple(_TASK_CLASSES)  # the names --task accepts: the tasks package's
SCHEDULES = ("cosine", "poly")
_POSITIVE, _NONNEG, _FRACTION = Bound(1), Bound(0), Bound(0, 1)
_TYPO = 10.0  # learning rates past 10 (AdamW's are below 1) are typos, and overflow the optimiser's float32
_ALL_IMAGES = "; leave it out to use all images"
_CPUS = "the machine's CPUs (at least 4)"  # the docs' words for MAX_WORKERS, which each machine sets


def check_run_name(name: str) -> None:
    """A run name is one folder name: it may not climb out of `output` or into a sub-folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ValueError("is not a single folder name; give a plain name such as 'run1' (the output option chooses "
                         "the parent folder)")


@dataclass
class TrainConfig:
    # what
    task: str = option("classification", "classification; segmentation (per-pixel labels: the Fashion-MNIST "
                       "scenes, ADE20K, Cityscapes or image/mask folders; scored by mIoU); or detection (boxes and "
                       "instance masks: the scenes' instances, COCO 2017 or COCO-format folders; maskrcnn_* and "
                       "retinanet_* models; scored by COCO box AP) (default: classification)",
                       choices=TASKS)
    model: str = option("qtvit_nano", "model name (qtvit.list_models())", metavar="NAME")
    data: str | None = option(None, "'fashion-mnist' (default), a folder of Fashion-MNIST idx files, or an "
                              "ImageNet-style folder with train/ and val/; with --task segmentation: "
                              "'fashion-mnist-scenes' (default), an ADE20K or Cityscapes folder, or a folder of "
                              "image/mask pairs; with --task detection: 'scenes' (default), a COCO 2017 folder "
                              "(annotations/instances_{train,val}2017.json, train2017/, val2017/), a folder with "
                              "train/ and val/ COCO-format folders, or one COCO-format folder or json (trained and "
                              "evaluated on)", flags=("--data-dir",), metavar="DATA")
    output: str = option("runs", "parent folder of run folders", metavar="DIR")
    name: str | None = option(None, "run folder name (default <model>-<recipe>-<time>)", metavar="NAME",
                              check=check_run_name)
    num_classes: int | None = option(None, "classes (default: the dataset's; detection: its categories + 1, the "
                                     "background, and no other count)", bound=Bound(1, 1_000_000))
    img_size: int | None = option(None, "image size the data is cropped to (segmentation, detection: the training "
                                  "crop), "
                                  "recorded in the saved weights (default: the model's); a positional embedding "
                                  "keeps its stored size unless --model-kwargs pos_embed_size=N", bound=IMG_SIZE,
                                  hint=" (pixels; sizes beyond that cannot be meant)")
    crop_pct: float | None = option(None, "eval crop ratio (default: the model's)", bound=Bound(0, 1, lo_open=True),
                                    hint=" (the fraction of the resized image kept by the centre crop)",
                                    allow_none=True)
    # schedule and optimiser
    epochs: int = option(10, "total epochs, warm-up included", bound=_POSITIVE)
    warmup_epochs: float = option(1.0, "linear warm-up epochs (fractions allowed)", bound=Bound(0, 1e6))
    schedule: str = option("cosine", "learning-rate decay after the warm-up: cosine (to --min-lr), or poly (power "
                           "0.9, mmseg's) (default: cosine)", choices=SCHEDULES)
    batch_size: int = option(128, "batch per process", bound=_POSITIVE, flags=("-b",))
    eval_batch_size: int = option(256, "eval batch per process (segmentation images of their own sizes, ADE20K's "
                                  "or a folder's: one at a time, as the official evaluation; detection: at most 8)",
                                  bound=_POSITIVE)
    lr: float = option(1e-3, "peak learning rate", bound=Bound(0, _TYPO, lo_open=True))
    scale_lr_by_world: bool = option(False, "multiply --lr by the number of processes (official EfficientViT rule)")
    min_lr: float = option(0.0, "final learning rate of the schedule", bound=Bound(0, _TYPO))
    warmup_lr: float = option(0.0, "learning rate at step 0", bound=Bound(0, _TYPO))
    weight_decay: float = option(0.05, "AdamW weight decay (none on norms and biases)", bound=Bound(0, 1000))
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", bound=Bound(0, 1, hi_open=True))
    opt_eps: float = option(1e-8, "AdamW eps", bound=Bound(0, 1, lo_open=True))
    clip_grad: float | None = option(None, "clip the gradient norm to this", bound=Bound(0, lo_open=True),
                                     allow_none=True)
    fused_optimizer: bool = option(False, "torch's fused AdamW kernel (one pass over all parameters; same update "
                                   "up to rounding)")
    # loss and regularisation
    smoothing: float = option(0.1, "label smoothing", bound=Bound(0, 1, hi_open=True))
    aux_weight: float = option(0.4, "segmentation: weight of the auxiliary head's loss", bound=_NONNEG)
    ohem: float = option(0.0, "segmentation: online hard example mining, the loss over the pixels whose own class "
                         "has probability below this (mmseg: 0.7), at least 1/16 of them (default 0: off)",
                         bound=Bound(0, 1))
    scale_range: tuple[float, float] = option((0.5, 2.0), "segmentation and detection: random rescale ratio range "
                                              "before the crop (mmseg: 0.5 2.0; detection: of --img-size, for the "
                                              "short side)", bound=Bound(0, 8, lo_open=True))
    scene_items: tuple[int, int] = option((3, 7), "segmentation and detection on the embedded scenes: fewest and "
                                          "most items per training scene (the test scenes keep 3-7; seg-scenes "
                                          "uses 12 20, docs/segmentation.md)", bound=Bound(2, 64))
    eval_size: int | None = option(None, "segmentation: evaluate with the images' short side resized to this (the "
                                   "labels keep their size; default: the dataset's protocol)", bound=Bound(8, 8192))
    bce: bool = option(False, "BCE-with-logits loss instead of cross-entropy")
    mixup: float = option(0.0, "mixup Beta alpha (0 = off)", bound=_NONNEG)
    cutmix: float = option(0.0, "cutmix Beta alpha (0 = off)", bound=_NONNEG)
    randaug_n: int = option(0, "RandAugment ops per image (0 = off)", bound=Bound(0, 16))
    randaug_m: int = option(0, "RandAugment magnitude", bound=Bound(0, 30))
    reprob: float = option(0.0, "random erasing probability", bound=_FRACTION)
    rrc_scale: tuple[float, float] = option((0.08, 1.0), "random resized crop area range (image folders)",
                                            bound=Bound(0, 1, lo_open=True))
    padding: int = option(2, "random-crop padding (Fashion-MNIST)", bound=Bound(0, 64))
    hflip: bool = option(True, "random horizontal flips")
    drop_path: float = option(0.0, "drop path rate", bound=Bound(0, 1, hi_open=True))
    drop_path_schedule: str = option("constant", "constant, or linear in training progress (official EfficientViT)",
                                     choices=("constant", "linear"))
    # EMA and BN
    model_ema: bool = option(False, "keep an EMA of the weights")
    model_ema_decay: float = option(0.9998, "EMA decay", bound=_FRACTION)
    model_ema_warmup_steps: int = option(4000, "EMA warm-up: decay*(1-exp(-step/N)); 0 = none", bound=_NONNEG)
    bn_reestimate_images: int = option(0, "re-estimate BN statistics on this many training images before eval "
                                       "(0 = off)", bound=_NONNEG)
    bn_reestimate_batch: int = option(100, "batch for the BN re-estimation", bound=_POSITIVE)
    # numerics and speed
    amp: str = option("none", "mixed precision (the attention core keeps fp32 itself)", choices=AMP_MODES)
    channels_last: bool = option(False, "channels-last memory format")
    sync_bn: bool = option(False, "SyncBatchNorm across processes (CUDA)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N", parse=device_arg)
    threads: int | None = option(None, "torch threads per process (default: the cores divided by the processes on "
                                 "this machine)", bound=Bound(1, MAX_WORKERS), hint=CPU_HINT,
                                 accepts=f"whole numbers from 1 to {_CPUS}")
    workers: int = option(4, "data loader workers (image folders)", bound=WORKERS, hint=CPU_HINT,
                          accepts=f"whole numbers from 0 to {_CPUS}")
    seed: int = option(0, "random seed", bound=Bound(0, 2**32 - 1))
    # checkpoints and logging
    checkpoint_every_steps: int = option(0, "also checkpoint every N steps (0: per epoch only)", bound=_NONNEG)
    keep_checkpoints: int = option(1, "checkpoints to keep", bound=_POSITIVE)
    resume: str | None = option(None, "continue the run in this run or checkpoint folder (default: start a new run)",
                                metavar="PATH")
    eval_every_epochs: int = option(1, "evaluate every N epochs", bound=_POSITIVE)
    limit_train: int | None = option(None, "use only the first N training images (default: all)", bound=_POSITIVE,
                                     hint=_ALL_IMAGES)
    limit_eval: int | None = option(None, "use only the first N eval images (default: all)", bound=_POSITIVE,
                                    hint=_ALL_IMAGES)
    max_steps: int | None = option(None, "stop after N steps, e.g. for a smoke run; the schedule still follows "
                                   "--epochs (default: no limit)", bound=_POSITIVE)
    progress: bool = option(True, "progress bar")
    recipe: str | None = option(None, "the preset the run started from (the --recipe flag is the train parser's)",
                                cli=False)
    model_kwargs: dict = option(help="extra model constructor arguments, KEY=VALUE (JSON values)", factory=dict)
    pretrained: bool = option(False, "fine-tune: start from the model's official weights (downloaded once; `qtvit "
                              "list-models --pretrained` lists the models that have them); a classifier of another "
                              "class count starts fresh")
    initial_checkpoint: str | None = option(None, "fine-tune: start from these weights (a run or checkpoint folder, "
                                            ".safetensors, or an official .pt/.pth); a classifier of another class "
                                            "count starts fresh (default: none)", metavar="PATH")
    seg_jitter: bool = option(True, "segmentation: photometric jitter of the training crops")
