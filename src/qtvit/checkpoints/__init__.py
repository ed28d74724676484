"""Checkpoints: one format for qtvit's own weights, and the edge between official formats and qtvit's names.

- ``files.py``: finding (``resolve_weights``, ``latest_checkpoint``) and reading files as data only
  (safetensors, ``torch.load(weights_only=True)``, ``load_train_state``);
- ``config.py``: the model config stored under ``CONFIG_KEY`` (``model_config``, ``read_config``,
  ``decode_model_args`` with its allow-list of layer types);
- ``load.py``: ``load_checkpoint`` (official formats through each family's key map, clear errors);
- ``save.py``: ``save_weights`` and training checkpoints (``save_checkpoint``), written atomically.

``qtvit.save_pretrained`` (in ``qtvit.models``) writes a directory ``create_model(checkpoint_path=dir)`` rebuilds.
This package does not import ``qtvit.models``: the models import it.
"""
from .config import CONFIG_KEY, LAYER_TYPES, decode_model_args, model_config, read_config, unwrap_model
from .files import (CONFIG_NAME, EMA_NAME, TRAIN_STATE_NAME, WEIGHTS_NAME, CheckpointError, latest_checkpoint,
                    load_train_state, resolve_weights)
from .load import LoadReport, adapt_input_conv, load_checkpoint, read_state_dict
from .save import check_train_state, save_checkpoint, save_weights, write_safetensors

__all__ = [
    "CONFIG_KEY", "CONFIG_NAME", "check_train_state", "EMA_NAME", "TRAIN_STATE_NAME", "WEIGHTS_NAME", "LAYER_TYPES",
    "CheckpointError",
    "LoadReport", "adapt_input_conv", "decode_model_args", "latest_checkpoint", "load_checkpoint",
    "load_train_state", "model_config", "read_config", "read_state_dict", "resolve_weights", "save_checkpoint",
    "save_weights", "unwrap_model", "write_safetensors",
]
