"""Parameter counts of the Mask R-CNN detectors beside the QT-ViT paper's Table 4 (a markdown table on stdout).

Builds each detector on the meta device (no memory, no init time) and splits its parameters into backbone, FPN,
RPN, box head and mask head. The last column adds to ours what mmdetection's Cascade Mask R-CNN has beyond Mask
R-CNN: two more box heads (two 1024-d fc, class-agnostic regression) and two more mask heads, with the first box
head's regression made class-agnostic as cascade's are. Usage: python scripts/det_params.py
"""
from __future__ import annotations

import torch

import qtvit

PAPER = {"efficientvit_b1": 57.6, "efficientvit_b2": 68.0, "efficientvit_b3": 92.1,
         "qtvit_1": 57.9, "qtvit_2": 68.5, "qtvit_3": 93.1}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    print("| backbone | backbone (no classifier) | FPN | RPN | box head | mask head | ours, Mask R-CNN | paper, "
          "Table 4 | ours + cascade's extra heads |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("efficientvit_b1", "qtvit_1", "efficientvit_b2", "qtvit_2", "efficientvit_b3", "qtvit_3",
                 "l2vit_tiny"):
        with torch.device("meta"):
            m = qtvit.create_model(f"maskrcnn_{name}")
        heads = m.roi_heads
        box_head, box_pred = count(heads.box_head), count(heads.box_predictor)
        mask = count(heads.mask_head) + count(heads.mask_predictor)
        reg = heads.box_predictor.bbox_pred
        agnostic_pred = box_pred - count(reg) + (reg.in_features + 1) * 4  # one box per RoI, not one per class
        cascade = count(m) - box_pred + 3 * agnostic_pred + 2 * box_head + 2 * mask
        cells = [count(m.backbone.body), count(m.backbone.fpn), count(m.rpn), box_head + box_pred, mask, count(m)]
        paper = f"{PAPER[name]:.1f}" if name in PAPER else "-"
        print(f"| {name} | " + " | ".join(f"{c / 1e6:.2f}" for c in cells) + f" | {paper} | {cascade / 1e6:.2f} |")


if __name__ == "__main__":
    main()
