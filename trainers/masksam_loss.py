"""MaskSAM's training loss: per slice, its queries matched one to one to the slice's label regions (Hungarian,
Mask2Former's way), then class, mask and auxiliary mask and box terms on the matched pairs (the official
``HungarianMatcherAndAux_2_4`` and ``SetCriterion``, bxie9/MaskSAM commit c6860c5,
``nnunetv2/training/loss/{matcher,criterion,box_ops}.py``).

Targets: every label value present in a slice, background included, is one target (class id, mask, box of the
mask). Masks are compared at random points (the matcher: P uniform points per slice, shared by all its masks;
the criterion: PointRend's sampling, 3/4 of the P points where the prediction is least certain), drawn from
torch's global generator in the official order, so a seeded run gives the official numbers. Official behaviours
kept: the auxiliary masks are probabilities, and both the matching costs and the losses treat them as logits
(a second sigmoid); their "uncertainty" is -|p|, so the points go where the probability is lowest; the class
loss weighs the no-object class by ``eos_coef`` and divides by the batch's sum of weights.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from desam_nnu.model.masksam import mask_boxes

WEIGHTS = {"loss_ce": 0.2, "loss_mask": 1.5, "loss_dice": 1.5, "loss_aux_mask": 0.5, "loss_aux_dice": 0.5,
           "loss_aux_bbox": 0.5, "loss_aux_giou": 0.2}  # the official ACDC and Synapse trainers'


def slice_targets(seg: Tensor) -> List[Dict[str, Tensor]]:
    """``seg`` [B, 1, T, H, W] labels -> per slice, in (volume, slice) order: ``labels`` [n] (the values present,
    ascending, 0 included), ``masks`` [n, H, W] (0/1) and ``bboxes`` [n, 4] ((x0, y0, x1, y1) / (W, H))."""
    slices = seg[:, 0].reshape(-1, *seg.shape[-2:])
    targets = []
    for s in slices:
        labels = torch.unique(s).long()
        masks = (s[None] == labels[:, None, None].to(s.dtype)).long()
        targets.append({"labels": labels, "masks": masks,
                        "bboxes": mask_boxes(masks[None].float())[0].reshape(-1, 4)})
    return targets


def point_sample(values: Tensor, points: Tensor) -> Tensor:
    """values [N, 1, H, W], points [N, P, 2] in 0..1 (x, y) -> [N, P], bilinear (``align_corners=False``)."""
    return F.grid_sample(values, 2.0 * points[:, :, None] - 1.0, align_corners=False)[:, 0, :, 0]


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N, 4], [M, 4] (x0, y0, x1, y1) -> [N, M] GIoU, with the official 1e-6 in both denominators."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b - inter
    hull = (torch.max(a[:, None, 2:], b[:, 2:]) - torch.min(a[:, None, :2], b[:, :2])).clamp(min=0).prod(-1)
    return inter / (union + 1e-6) - (hull - union) / (hull + 1e-6)


def _pairwise_sigmoid_ce(x: Tensor, t: Tensor) -> Tensor:
    """[Q, P] logits, [n, P] targets -> [Q, n] mean binary cross-entropy."""
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / x.shape[1]


def _pairwise_dice(x: Tensor, t: Tensor) -> Tensor:
    """[Q, P] logits, [n, P] targets -> [Q, n] 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), as the official mixes
    float64 sums with a float32 product."""
    p = x.double().sigmoid()
    numerator = 2 * (p.float() @ t.float().T)
    return 1 - (numerator + 1) / (p.sum(-1)[:, None] + t.double().sum(-1)[None, :] + 1)


@torch.no_grad()
def match(outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]], num_points: int,
          weights: Dict[str, float] = WEIGHTS) -> List[Tuple[Tensor, Tensor]]:
    """Per slice, (query indices, target indices) minimising the weighted costs (the official matching costs use
    the loss weights)."""
    indices = []
    for n, target in enumerate(targets):
        boxes, tgt_boxes = outputs["pred_aux_bboxes"][n], target["bboxes"]
        cost_box = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(boxes, tgt_boxes)
        points = torch.rand(1, num_points, 2, device=boxes.device)
        aux = outputs["pred_aux_masks"][n][:, None]
        tgt = target["masks"].to(aux)[:, None]
        tgt = point_sample(tgt, points.repeat(tgt.shape[0], 1, 1)).float()
        aux = point_sample(aux, points.repeat(aux.shape[0], 1, 1)).float()
        cost_class = -outputs["pred_logits"][n].softmax(-1)[:, target["labels"]]
        mask = outputs["pred_masks"][n][:, None]
        mask = point_sample(mask, points.repeat(mask.shape[0], 1, 1)).float()
        cost = (weights["loss_mask"] * _pairwise_sigmoid_ce(mask, tgt) + weights["loss_ce"] * cost_class
                + weights["loss_dice"] * _pairwise_dice(mask, tgt) + weights["loss_aux_bbox"] * cost_box
                + weights["loss_aux_mask"] * _pairwise_sigmoid_ce(aux, tgt)
                + weights["loss_aux_mask"] * _pairwise_dice(aux, tgt) + weights["loss_aux_giou"] * cost_giou)
        cost = cost.reshape(boxes.shape[0], -1).cpu().numpy()
        cost[np.isnan(cost)] = 100  # the official's fallback for NaN costs
        rows, cols = linear_sum_assignment(cost)
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def uncertain_points(logits: Tensor, num_points: int, oversample: float = 2.0, importance: float = 0.75) -> Tensor:
    """PointRend's sampling (detectron2's ``get_uncertain_point_coords_with_randomness``): of ``oversample``
    x P uniform points, the ``importance`` share where |logits| is smallest, then uniform ones.
    logits [M, 1, H, W] -> points [M, P, 2]."""
    m, drawn = logits.shape[0], int(num_points * oversample)
    points = torch.rand(m, drawn, 2, device=logits.device)
    uncertainty = -point_sample(logits, points).abs()
    k = int(importance * num_points)
    idx = torch.topk(uncertainty, k=k, dim=1)[1]
    points = torch.gather(points, 1, idx[..., None].expand(-1, -1, 2))
    if num_points - k > 0:
        points = torch.cat([points, torch.rand(m, num_points - k, 2, device=logits.device)], dim=1)
    return points


class MaskSAMCriterion(nn.Module):
    """``forward(outputs, targets)`` -> the weighted sum and the terms (unweighted, as floats). ``outputs``:
    :meth:`desam_nnu.model.masksam.MaskSAM.outputs`; ``targets``: :func:`slice_targets`."""

    def __init__(self, num_classes: int, num_points: int = 128 * 128 * 2, eos_coef: float = 0.1,
                 oversample: float = 2.0, importance: float = 0.75) -> None:
        super().__init__()
        self.num_classes, self.num_points, self.eos_coef = num_classes, num_points, eos_coef
        self.oversample, self.importance = oversample, importance
        weight = torch.ones(num_classes + 1)
        weight[-1] = eos_coef
        self.register_buffer("empty_weight", weight)

    def _masks(self, predicted: Tensor, targets: List[Dict[str, Tensor]], indices, src, num: float, name: str
               ) -> Dict[str, Tensor]:
        masks = predicted[src].float()[:, None]
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(masks)[:, None]
        with torch.no_grad():
            points = uncertain_points(masks, self.num_points, self.oversample, self.importance)
            labels = point_sample(tgt, points)
        logits = point_sample(masks, points)
        ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num
        p = logits.sigmoid()
        dice = (1 - (2 * (p * labels).sum(-1) + 1) / (p.sum(-1) + labels.sum(-1) + 1)).sum() / num
        return {f"loss_{name}mask": ce, f"loss_{name}dice": dice}

    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
                ) -> Tuple[Tensor, Dict[str, float]]:
        indices = match(outputs, targets, self.num_points)
        num = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        batch = torch.cat([torch.full_like(q, n) for n, (q, _) in enumerate(indices)])
        src = (batch, torch.cat([q for q, _ in indices]))
        logits = outputs["pred_logits"].float()
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[src] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        weight = torch.full(logits.shape[:2], self.eos_coef, device=logits.device)
        weight[src] = 1.0
        ce = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight, reduction="none")
        terms = {"loss_ce": (ce.sum(1) / weight.sum()).sum()}
        terms.update(self._masks(outputs["pred_masks"], targets, indices, src, num, ""))
        terms.update(self._masks(outputs["pred_aux_masks"], targets, indices, src, num, "aux_"))
        boxes = outputs["pred_aux_bboxes"][src]
        tgt_boxes = torch.cat([t["bboxes"][j] for t, (_, j) in zip(targets, indices)]).to(boxes)
        terms["loss_aux_bbox"] = F.l1_loss(boxes, tgt_boxes, reduction="none").sum() / num
        terms["loss_aux_giou"] = (1 - torch.diag(generalized_box_iou(boxes, tgt_boxes))).sum() / num
        total = sum(WEIGHTS[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}
