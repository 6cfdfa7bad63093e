"""DeSAM's training loss: Dice + cross-entropy on the masks, L1 on the predicted IoU.

The official trains with MONAI's ``DiceCELoss(sigmoid=True, squared_pred=True)`` on its one mask
channel plus ``L1Loss`` between the predicted IoU and the prompt-relevance label (1 when the point
lies on the object, else 0). With C classes each class is its own sigmoid channel and IoU, so the
same terms are taken per class and averaged. Voxels labelled < 0 (padding, outside the image) are
left out of both mask terms.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMOOTH = 1e-5  # MONAI's smooth_nr / smooth_dr defaults


def one_hot_classes(seg: Tensor, num_classes: int) -> Tensor:
    """[B, h, w] labels -> [B, C, h, w] float masks of classes 1..C."""
    classes = torch.arange(1, num_classes + 1, device=seg.device).view(1, -1, 1, 1)
    return (seg[:, None] == classes).float()


class DeSAMLoss(nn.Module):
    def __init__(self, iou_weight: float = 1.0) -> None:
        super().__init__()
        self.iou_weight = iou_weight

    def forward(self, mask_logits: Tensor, seg: Tensor, iou: Optional[Tensor] = None,
                iou_target: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, float]]:
        """mask_logits [B, C, h, w] at the label resolution; seg [B, h, w] integer labels (< 0 ignored);
        iou, iou_target [B, C] (points mode; None in box mode, where the official has no IoU term)."""
        target = one_hot_classes(seg, mask_logits.shape[1])
        valid = (seg >= 0).float()[:, None]
        prob = torch.sigmoid(mask_logits) * valid
        dims = (2, 3)
        dice = 1 - (2 * (prob * target).sum(dims) + SMOOTH) / ((prob ** 2).sum(dims) + (target ** 2).sum(dims) + SMOOTH)
        bce = F.binary_cross_entropy_with_logits(mask_logits, target, weight=valid.expand_as(target), reduction="sum")
        bce = bce / valid.expand_as(target).sum().clamp_min(1)
        total = dice.mean() + bce
        parts = {"dice": float(dice.mean().detach()), "bce": float(bce.detach())}
        if iou is not None and iou_target is not None:
            l1 = F.l1_loss(iou, iou_target)
            total = total + self.iou_weight * l1
            parts["iou_l1"] = float(l1.detach())
        return total, parts


class DAPSAMLoss(nn.Module):
    """The official DAPSAM's loss: ``0.2 * BCE + 0.8 * Dice`` on the sigmoid probabilities, BCE averaged over
    every voxel, Dice ``1 - (2 sum(p y) + 1) / (sum p + sum y + 1)`` summed over the whole batch (smooth 1).
    The official has one class; with C classes each class gets that Dice over the batch and the C values
    are averaged. Voxels labelled < 0 are left out of both terms."""

    def __init__(self, bce_weight: float = 0.2, dice_weight: float = 0.8) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, mask_logits: Tensor, seg: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """mask_logits [B, C, h, w] at the label resolution; seg [B, h, w] integer labels (< 0 ignored)."""
        target = one_hot_classes(seg, mask_logits.shape[1])
        valid = (seg >= 0).float()[:, None].expand_as(target)
        bce = F.binary_cross_entropy_with_logits(mask_logits, target, weight=valid, reduction="sum")
        bce = bce / valid.sum().clamp_min(1)
        prob = torch.sigmoid(mask_logits) * valid
        dims = (0, 2, 3)
        dice = 1 - (2 * (prob * target).sum(dims) + 1) / (prob.sum(dims) + target.sum(dims) + 1)
        total = self.bce_weight * bce + self.dice_weight * dice.mean()
        return total, {"dice": float(dice.mean().detach()), "bce": float(bce.detach())}
