"""Training, evaluation and inference: the loop (engine.py), recipes, EMA, optimiser and schedule, checkpoints,
metrics, distributed set-up. Needs the `train` extra (kornia, torchmetrics)."""
from .checkpoint import CheckpointError, latest_checkpoint, load_weights, save_checkpoint, save_weights
from .ema import ModelEma, ema_decay_at
from .engine import build_model, evaluate, load_model, predict, reestimate_bn, train, validate
from .optim import create_optimizer, lr_at, param_groups
from .recipes import RECIPES, TrainConfig, list_recipes, make_config

__all__ = [
    "train", "evaluate", "validate", "predict", "reestimate_bn", "build_model", "load_model", "TrainConfig",
    "RECIPES", "make_config", "list_recipes", "ModelEma", "ema_decay_at", "create_optimizer", "param_groups",
    "lr_at", "CheckpointError", "save_weights", "load_weights", "save_checkpoint", "latest_checkpoint",
]
