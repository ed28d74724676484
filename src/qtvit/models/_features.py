"""features_only: a backbone that returns its per-stage feature maps, as timm's FeatureListNet."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureInfo", "FeatureListNet"]


class FeatureInfo:
    """The selected stages' ``dict(num_chs, reduction, module)``, with timm's accessors."""

    def __init__(self, info: Sequence[dict], out_indices: Sequence[int]):
        self.out_indices = tuple(out_indices)
        self.info = [dict(info[i]) for i in self.out_indices]

    def get(self, key: str, idx: int | None = None):
        return [f[key] for f in self.info] if idx is None else self.info[idx][key]

    def channels(self, idx: int | None = None):
        """Channels of every selected stage (a list), or of the idx-th one."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        """Stride of every selected stage relative to the input (a list), or of the idx-th one."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self.get("module", idx)

    def __getitem__(self, idx: int) -> dict:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


def feature_take_indices(n: int, indices: int | Sequence[int] | None, name: str = "the model") -> list[int]:
    """timm's meaning of stage indices: None = every stage, an int k = the last k, a sequence = those stages
    (negative ones count from the end). Sorted, because a backbone yields its stages in depth order."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} asks for the last {indices} stages, but {name} has {n}; use 1..{n}")
        return list(range(n - indices, n))
    bad = [i for i in indices if not -n <= i < n]
    if bad or not indices:
        raise ValueError(f"indices {tuple(indices)} out of range: {name} has {n} feature stages "
                         f"(indices 0..{n - 1}, or negative from the end)")
    return sorted({i % n for i in indices})


class FeatureListNet(nn.Module):
    """Wrap a model with ``feature_info`` and ``forward_intermediates``; ``forward(x)`` returns the stage maps.

    The wrapped model (with its classifier) stays whole in ``self.model``, so its weights save and load under
    the model's own names.
    """

    is_feature_wrapper = True

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{name} does not support features_only=True: it has no feature_info or "
                             "forward_intermediates")
        info = list(info)
        self.model = model
        self.out_indices = tuple(feature_take_indices(len(info), out_indices, name))
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True))
