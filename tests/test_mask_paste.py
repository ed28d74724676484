"""Mask R-CNN's masks pasted where their training targets were cut (``qtvit.models._mask_paste``): a target that
torchvision's own ``project_masks_on_boxes`` cuts from an object comes back as that object, at the image's size and
after the transform's resize, closer than through torchvision's paste; the detectors use it unless told not to."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes  # noqa: E402

from qtvit.models._mask_paste import ExactPasteTransform, paste_masks  # noqa: E402
from qtvit.models.detection import build_detector  # noqa: E402

ELLIPSES = [(30.3, 20.7, 10.4, 7.2), (12.1, 40.6, 5.3, 9.1), (40.0, 30.0, 20.0, 14.0)]  # cx, cy, rx, ry (px)


def _ellipse(size: int, cx: float, cy: float, rx: float, ry: float, scale: float = 1.0) -> torch.Tensor:
    """The pixels (of an image `scale` times finer than the ellipse's units) whose centre lies inside it."""
    c = (torch.arange(size) + 0.5) / scale
    return ((c[None] - cx) / rx) ** 2 + ((c[:, None] - cy) / ry) ** 2 <= 1


def _box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


def _target(mask: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The 28 x 28 training target torchvision's Mask R-CNN cuts from `mask` for `box`, as (1, 1, 28, 28)."""
    return project_masks_on_boxes(mask[None].float(), box, torch.zeros(1, dtype=torch.long), 28)[:, None]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("ellipse", ELLIPSES)
def test_a_target_pasted_back_is_its_object(ellipse):
    gt = _ellipse(64, *ellipse)
    box = _box(gt)
    target = _target(gt, box)
    ours = _iou(paste_masks(target, box, (64, 64))[0, 0] > 0.5, gt)
    torchvisions = _iou(paste_masks_in_image(target, box, (64, 64))[0, 0] > 0.5, gt)
    assert ours >= 0.9 and ours >= torchvisions  # measured: 0.93 / 0.92, 0.91 / 0.86, 0.98 / 0.96


@pytest.mark.parametrize("ellipse", ELLIPSES)
def test_a_target_cut_from_the_resized_image_is_pasted_into_the_original(ellipse):
    gt, net = _ellipse(64, *ellipse), _ellipse(128, *ellipse, scale=2.0)  # the network sees the image at 2x
    net_box = _box(net)
    target = _target(net, net_box)
    box = resize_boxes(net_box, (128, 128), (64, 64))
    ours = _iou(paste_masks(target, box, (64, 64), ratio=(0.5, 0.5))[0, 0] > 0.5, gt)
    unshifted = _iou(paste_masks(target, box, (64, 64))[0, 0] > 0.5, gt)
    torchvisions = _iou(paste_masks_in_image(target, box, (64, 64))[0, 0] > 0.5, gt)
    assert ours >= 0.96 and ours > unshifted and ours > torchvisions  # measured: 0.97-0.99, 0.89-0.97, 0.83-0.94


def test_paste_keeps_shapes_and_ignores_boxes_outside_the_image():
    masks = torch.rand(3, 1, 28, 28)
    boxes = torch.tensor([[2.0, 3.0, 20.5, 11.0], [-40.0, -40.0, -10.0, -10.0], [5.0, 5.0, 5.0, 5.0]])
    out = paste_masks(masks, boxes, (24, 40))
    assert out.shape == (3, 1, 24, 40) and out[0].amax() > 0
    assert out[1].abs().sum() == 0  # wholly outside the image
    assert out[:, :, :, 21:].abs().sum() == 0 and out[0, :, 13:].abs().sum() == 0  # nothing beyond a box + a cell
    assert paste_masks(masks[:0], boxes[:0], (24, 40)).shape == (0, 1, 24, 40)


def test_detectors_paste_exactly_unless_asked_for_torchvisions_paste():
    kw = dict(min_size=64, max_size=96, fpn_channels=32, anchor_sizes=(8, 16, 32, 64, 128), num_classes=3,
              backbone_args=dict(strides=(2,) * 5, pos_embed_size=64), box_score_thresh=0.0)
    exact = build_detector("maskrcnn", "qtvit_nano", **kw).eval()
    legacy = build_detector("maskrcnn", "qtvit_nano", mask_paste="torchvision", **kw).eval()
    assert type(exact.transform) is ExactPasteTransform and type(legacy.transform) is GeneralizedRCNNTransform
    assert exact.state_dict().keys() == legacy.state_dict().keys()  # the transform holds no weights
    legacy.load_state_dict(exact.state_dict())
    image = torch.rand(3, 50, 70)
    with torch.no_grad():
        a, b = exact([image])[0], legacy([image])[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])  # only the masks are pasted differently
    assert a["masks"].shape == b["masks"].shape == (len(a["boxes"]), 1, 50, 70)
    with pytest.raises(ValueError, match="mask_paste='nearest': use one of"):
        build_detector("maskrcnn", "qtvit_nano", mask_paste="nearest", **kw)
