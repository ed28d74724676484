"""Training and the use of saved models: the loop (engine.py, set up in setup.py, its state in state.py), validation
and prediction of a saved model (evaluate.py), recipes, EMA, optimiser and schedule, the run's files, distributed
set-up. What differs between tasks (data, batches, loss, evaluation) is in ``qtvit.tasks``. Needs the `train` extra
(kornia, torchmetrics)."""
from .ema import ModelEma, ema_decay_at
from .engine import Callback, TrainingInterrupted, train
# `evaluate` stays the module (qtvit.train.evaluate.evaluate): a function of that name would hide it.
from .evaluate import iter_predictions, load_model, predict, reestimate_bn_on, validate
from .optim import create_optimizer, lr_at, param_groups
from .recipes import RECIPES, TrainConfig, check_config, list_recipes, make_config
from .setup import build_model
from .state import RunState

__all__ = [
    "train", "TrainingInterrupted", "Callback", "validate", "predict", "iter_predictions", "reestimate_bn_on",
    "build_model", "load_model", "TrainConfig", "RECIPES", "make_config", "list_recipes", "check_config",
    "RunState", "ModelEma", "ema_decay_at", "create_optimizer", "param_groups", "lr_at",
]
