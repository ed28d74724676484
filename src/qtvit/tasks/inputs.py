"""What every task feeds a model: a loader batch on the device, normalised, in the memory format asked for, under
the autocast of --amp. Shared by the tasks' training batches, evaluation, validation and prediction."""
from __future__ import annotations

import torch

from ..data import DataConfig, normalize
from ..options import AMP_MODES

__all__ = ["autocast", "model_input"]


def autocast(device: torch.device, amp: str):
    """torch.autocast for --amp none | bf16 | fp16."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}; use {', '.join(AMP_MODES)}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "none")


def model_input(x: torch.Tensor, data_cfg: DataConfig, device: torch.device, channels_last: bool = False):
    """A uint8 loader batch as the model's input: on the device, normalised, in the memory format asked for."""
    x = normalize(x.to(device, non_blocking=True), data_cfg.mean, data_cfg.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
