"""What the mask evaluation choices are worth for a trained Mask R-CNN: torchvision's mask paste or the exact one
(``qtvit.models._mask_paste``), masks ranked by the box's score or by score x maskness (``tasks.det_metrics``),
COCO's box and mask AP for each of the four. Scored on scenes of the training split that no training run reaches
(index 100 000 on; the detection job trains on the first 7 100), never on the test scenes.

    python scripts/det_mask_ablation.py --checkpoint runs/<run> [--scenes 200]
"""
from __future__ import annotations

import argparse

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from qtvit.data import load_fashion_mnist
from qtvit.data.det_transforms import detection_transform
from qtvit.data.scene_instances import FashionMNISTSceneInstances
from qtvit.data.scenes import SCENE_CLASSES, FashionMNISTScenes
from qtvit.tasks.det_metrics import coco_evaluate, coco_ground_truth, coco_results
from qtvit.train.evaluate import load_model

FIRST = 100_000


@torch.no_grad()
def predict(model, images: list[torch.Tensor], batch: int = 8) -> dict[int, dict]:
    out = {}
    for b in range(0, len(images), batch):
        out.update(zip(range(b, b + batch), model(images[b:b + batch])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint)
    x, y = load_fashion_mnist("train")
    data = FashionMNISTSceneInstances(FashionMNISTScenes(x, y, FIRST + a.scenes), transform=detection_transform(False))
    items = [data[FIRST + k] for k in range(a.scenes)]
    images = [im for im, _ in items]
    gt = coco_ground_truth({k: t for k, (_, t) in enumerate(items)}, {k: tuple(im.shape[-2:]) for k, im in
                                                                        enumerate(images)}, SCENE_CLASSES[1:])
    exact = model.transform
    legacy = GeneralizedRCNNTransform(exact.min_size, exact.max_size, exact.image_mean, exact.image_std,
                                      size_divisible=exact.size_divisible, fixed_size=exact.fixed_size).eval()
    cat_ids = list(range(1, len(SCENE_CLASSES)))
    print(f"{a.checkpoint}: {a.scenes} unseen training-split scenes (from {FIRST})")
    for paste, transform in (("torchvision", legacy), ("exact", exact)):
        model.transform = transform
        results = coco_results(predict(model, images), cat_ids)
        for ranking in ("box score", "score x maskness"):
            res = results if ranking != "box score" else [{k: v for k, v in r.items() if k != "mask_score"}
                                                          for r in results]
            r = coco_evaluate(gt, res)
            print(f"paste {paste:<12} masks ranked by {ranking:<17} box AP {r['bbox']['AP']:.2f}  mask AP "
                  f"{r['segm']['AP']:.2f} (AP50 {r['segm']['AP50']:.2f}, AP75 {r['segm']['AP75']:.2f}, "
                  f"APs {r['segm']['APs']:.2f})", flush=True)


if __name__ == "__main__":
    main()
