"""Coarse-to-fine grid scoring: PRIM on a coarse subset of DeSAM's n x n grid, then only around its best prompts.

DeSAM's automatic mode runs PRIM's two-way transformer on every grid prompt (81 for the official 9 x 9), and each
prompt carries its own copy of the image side through it, so PRIM's cost grows with the prompts scored. With top-k
1 the kept prompt is the one of highest predicted IoU, and the IoU map over the grid is smooth where an object is:
the coarse grid (every other row and column, 25 of 81) finds the peak's neighbourhood, and the prompts around the
best coarse ones (at most 8 each) find the peak. Prompts never scored get IoU -inf, so no threshold keeps them.

This is not the official decode: a peak that lies between coarse points whose own IoUs are low is missed. It is an
option (``desam_predict --coarse-grid``) with its Dice cost measured (BENCHMARKS.md), never the default.
"""
import math
from typing import Callable

import torch
from torch import Tensor


def grid_side(num_prompts: int) -> int:
    """n for a square n x n grid of ``num_prompts`` prompts; a ValueError for any other count."""
    n = math.isqrt(num_prompts)
    if n * n != num_prompts:
        raise ValueError(f"a coarse-to-fine grid needs a square grid of prompts, got {num_prompts}")
    return n


def coarse_indices(n: int, device: torch.device = torch.device("cpu")) -> Tensor:
    """Indices [m] of the coarse prompts of an n x n grid (row-major, x fastest, as ``make_point_grid``): every
    other row and column from the first, and the last row and column (so that the grid's edges are covered)."""
    keep = sorted(set(range(0, n, 2)) | {n - 1})
    rows = torch.tensor(keep, device=device)
    return (rows[:, None] * n + rows[None, :]).flatten()


def neighbour_indices(n: int, centres: Tensor) -> Tensor:
    """Sorted unique indices of the prompts within one row and one column of ``centres`` [k] (centres included)."""
    r, c = centres // n, centres % n
    offsets = torch.tensor([-1, 0, 1], device=centres.device)
    rr = (r[:, None, None] + offsets[None, :, None]).expand(-1, 3, 3)
    cc = (c[:, None, None] + offsets[None, None, :]).expand(-1, 3, 3)
    inside = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
    return torch.unique(rr[inside] * n + cc[inside])


def coarse_to_fine_iou(score: Callable[[Tensor], Tensor], num_prompts: int, top_k: int,
                       device: torch.device) -> Tensor:
    """PRIM's IoU [P, C] for a square grid of P prompts, scored coarse to fine; -inf where not scored.

    score: prompt indices [m] -> their predicted IoU [m, C] (PRIM on those prompts).
    1. the coarse prompts (:func:`coarse_indices`); 2. per class, the ``top_k`` best coarse prompts; 3. the
    prompts around them (:func:`neighbour_indices`) not yet scored."""
    n = grid_side(num_prompts)
    coarse = coarse_indices(n, device)
    coarse_iou = score(coarse)  # [m, C]
    iou = torch.full((num_prompts, coarse_iou.shape[1]), float("-inf"), dtype=coarse_iou.dtype, device=device)
    iou[coarse] = coarse_iou
    best = coarse[torch.topk(coarse_iou, min(top_k, len(coarse)), dim=0).indices.flatten()]
    around = neighbour_indices(n, best)
    fresh = around[~torch.isin(around, coarse)]
    if fresh.numel():
        iou[fresh] = score(fresh)
    return iou
