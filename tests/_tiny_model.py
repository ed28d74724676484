"""A tiny model that follows the model-family contract, for testing the builder and checkpoints fast."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from qtvit.models import register_model, unregister_model


class TinyNet(nn.Module):
    """Stem + 2 strided stages + linear head; ``pos_embed=True`` adds "new" parameters (like QT-ViT's)."""

    new_parameter_patterns = (r"pos_embed$",)

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (4, 8, 8),
                 pos_embed: bool = False, act_layer: type[nn.Module] = nn.ReLU, tied: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  act_layer())
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1), nn.BatchNorm2d(widths[i + 1]), act_layer())
            for i in range(len(widths) - 1))
        if pos_embed:
            self.stage_pos_embed = nn.Parameter(torch.zeros(1, widths[-1], 1, 1))
            self.stem_pos_embed = nn.Parameter(torch.zeros(1, widths[0], 1, 1))
        self.pos = pos_embed
        self.num_features = widths[-1]
        self.head = nn.Linear(widths[-1], num_classes) if num_classes else nn.Identity()
        if tied:  # a second name for the same tensors, and a non-contiguous buffer
            self.head_alias = nn.Linear(widths[-1], num_classes)
            self.head_alias.weight = self.head.weight
            self.register_buffer("transposed", torch.randn(widths[-1], 3).t())
        self.pretrained_cfg = dict(url=None, file="tinynet.pt", num_classes=1000, input_size=(3, 32, 32),
                                   crop_pct=0.9, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                   first_conv="stem.0", classifier="head", license="test")
        red = [2 * 2 ** i for i in range(len(widths))]
        self.feature_info = [dict(num_chs=widths[0], reduction=2, module="stem")] + [
            dict(num_chs=w, reduction=r, module=f"stages.{i}") for i, (w, r) in enumerate(zip(widths[1:], red[1:]))]

    def forward_intermediates(self, x, indices=None, intermediates_only=True):
        take = range(len(self.feature_info)) if indices is None else indices
        feats, x = [], self.stem(x)
        if self.pos:
            x = x + self.stem_pos_embed
        for i, block in enumerate([nn.Identity(), *self.stages]):
            x = block(x)
            if i == len(self.stages) and self.pos:
                x = x + self.stage_pos_embed
            if i in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def forward(self, x):
        x = self.forward_intermediates(x, intermediates_only=False)[0]
        return self.head(x.mean((2, 3)))

    def reset_classifier(self, num_classes: int):
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    @staticmethod
    def checkpoint_filter_fn(state_dict, model):
        # the "official" layout of this toy: everything under backbone., head called classifier
        if not any(k.startswith("backbone.") for k in state_dict):
            return state_dict
        return {k.removeprefix("backbone.").replace("classifier.", "head."): v for k, v in state_dict.items()}


def to_official(sd):
    return {(k.replace("head.", "classifier.") if k.startswith("head.") else "backbone." + k): v
            for k, v in sd.items()}


def tinynet_test(pretrained=False, num_classes=1000, in_chans=3, kernel=None, **kwargs):
    model = TinyNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.kernel_name = kernel  # a real family builds its attention from it
    return model


@contextlib.contextmanager
def registered(fn=tinynet_test):
    """Register ``fn`` for the duration of a test; the registry is left as it was."""
    register_model(fn)
    try:
        yield fn.__name__
    finally:
        unregister_model(fn.__name__)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float tensor (parameters and BN statistics) seeded random values, so outputs are informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.5)
    return model.eval()
