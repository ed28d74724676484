"""Parts of a model named on the command line: ``NAME.backbone`` is the ``backbone`` of model NAME (a detector's
backbone+FPN, ``qtvit.models.detection.BackboneFPN``), for ``qtvit benchmark models`` and ``qtvit export``.
Constructor arguments follow as for any model: ``maskrcnn_qtvit_1.backbone:kernel=softmax``."""
from __future__ import annotations

import torch.nn as nn

__all__ = ["PARTS", "split_part", "model_part"]

PARTS = ("backbone",)


def split_part(spec: str) -> tuple[str, str | None]:
    """``"maskrcnn_qtvit_1.backbone:kernel=softmax"`` -> ``("maskrcnn_qtvit_1:kernel=softmax", "backbone")``; a spec
    without a part comes back as it is, with None."""
    name, sep, args = spec.partition(":")
    base, dot, part = name.rpartition(".")
    if dot and part in PARTS:
        return base + sep + args, part
    return spec, None


def model_part(model: nn.Module, part: str | None, spec: str = "") -> nn.Module:
    """``model`` itself (``part`` None) or its part, with an error naming the model when it has none."""
    if part is None:
        return model
    sub = getattr(model, part, None)
    if not isinstance(sub, nn.Module):
        raise ValueError(f"{spec or type(model).__name__}: the model has no .{part} (only the detectors' backbone+FPN "
                         f"is a part: e.g. maskrcnn_qtvit_1.{part})")
    return sub
