"""A tiny registered Mask R-CNN for the detection task's tests: qtvit_nano with B-series strides (4-32 at stages
1-4) under a 32-channel FPN, torchvision's heads with few RoIs (RoIAlign's backward is slow on CPU), images resized
to 64-96 px. ``register_tiny_detectors()`` registers it (and a RetinaNet twin) as the zoo's detectors are."""
from __future__ import annotations

from qtvit.models import list_models, register_model

FAST = dict(min_size=64, max_size=96, fpn_channels=32, anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
            rpn_batch_size_per_image=64, box_batch_size_per_image=32, box_detections_per_img=20)
BACKBONE = dict(strides=(2,) * 5, pos_embed_size=64)


def _build(kind: str, name: str, pretrained: bool, num_classes: int, in_chans: int, drop_path_rate: float, **kw):
    from qtvit.models._builder import build_model_with_cfg
    from qtvit.models.detection import _cfg, build_detector
    args = dict(FAST, **kw) if kind == "maskrcnn" else dict(
        {k: FAST[k] for k in ("min_size", "max_size", "fpn_channels")}, detections_per_img=20, **kw)
    if kind != "maskrcnn":
        args.setdefault("anchor_sizes", (16, 32, 64, 128, 256)[:5])
    cfg = dict(_cfg(kind, "qtvit_nano"), input_size=(3, 64, 64))
    return build_model_with_cfg(build_detector, name, pretrained, pretrained_cfg=cfg, kind=kind, backbone="qtvit_nano",
                                num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                                backbone_args=dict(BACKBONE), **args)


def det_tiny(pretrained: bool = False, num_classes: int = 11, in_chans: int = 3, drop_path_rate: float = 0.0, **kw):
    return _build("maskrcnn", "det_tiny", pretrained, num_classes, in_chans, drop_path_rate, **kw)


def retina_tiny(pretrained: bool = False, num_classes: int = 11, in_chans: int = 3, drop_path_rate: float = 0.0, **kw):
    return _build("retinanet", "retina_tiny", pretrained, num_classes, in_chans, drop_path_rate, **kw)


def register_tiny_detectors() -> list[str]:
    """Register det_tiny and retina_tiny (idempotent); returns the names registered by this call."""
    names = []
    for fn in (det_tiny, retina_tiny):
        if fn.__name__ not in list_models():
            register_model(fn)
            names.append(fn.__name__)
    return names
