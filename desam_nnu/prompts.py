"""Prompts as plain tensors: training points, whole boxes and inference grids.

All coordinates are in SAM-input pixels (the ``image_size`` frame after a patch is resized), in
``(x, y)`` order, as the network's ``decode`` takes them.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from desam_nnu.model.desam import make_point_grid

__all__ = ["sample_training_points", "training_boxes", "whole_boxes", "make_point_grid", "patch_to_input_coords"]


def patch_to_input_coords(rows: Tensor, cols: Tensor, scale: float) -> Tensor:
    """Voxel indices of a patch -> (x, y) input pixels: the voxel centre after resizing by ``scale``.

    SAM's prompt encoder adds 0.5 to coordinates itself (pixel centres), hence the - 0.5.
    """
    return torch.stack([(cols.float() + 0.5) * scale - 0.5, (rows.float() + 0.5) * scale - 0.5], dim=-1)


def sample_training_points(seg: Tensor, num_classes: int, scale: float, foreground_fraction: float = 0.5,
                           generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """DeSAM's training prompts (paper, and the official ``iou_label``): one point per slice.

    seg: [B, h, w] integer labels at patch resolution (0 background, 1..C classes, < 0 outside the
    image, e.g. padding, where no point is placed).
    Half the points (``foreground_fraction``) fall on a random foreground voxel when the slice has
    one, the rest on a random background voxel. The point label is always positive; the IoU target
    of class c is 1 when the point lies on class c, else 0; the mask target stays the full ground
    truth (decoupled from the prompt).

    Returns coords [B, 1, 2] (input pixels), labels [B, 1] (all 1), iou_target [B, C] float.
    """
    b = seg.shape[0]
    flat = seg.reshape(b, -1)
    width = seg.shape[-1]
    want_fg = torch.rand(b, generator=generator) < foreground_fraction
    chosen = torch.empty(b, dtype=torch.long)
    for i in range(b):  # B is the batch size (a handful): per-slice voxel lists, not per-prompt work
        fg = torch.nonzero(flat[i] > 0).flatten()
        bg = torch.nonzero(flat[i] == 0).flatten()
        pool = fg if (want_fg[i] and fg.numel()) or not bg.numel() else bg
        if not pool.numel():
            pool = torch.arange(flat.shape[1])
        chosen[i] = pool[torch.randint(pool.numel(), (1,), generator=generator)]
    rows, cols = chosen // width, chosen % width
    coords = patch_to_input_coords(rows, cols, scale)[:, None, :]
    on = flat.gather(1, chosen[:, None]).squeeze(1)
    iou_target = torch.zeros(b, num_classes)
    hit = on > 0
    iou_target[hit, on[hit].long() - 1] = 1.0
    return coords, torch.ones(b, 1, dtype=torch.long), iou_target


def whole_boxes(num: int, image_size: int) -> Tensor:
    """DeSAM's whole-box mode: the box covering the whole input, [num, 4] as x0, y0, x1, y1."""
    return torch.tensor([[0.0, 0.0, float(image_size), float(image_size)]]).expand(num, 4).clone()


def training_boxes(seg: Tensor, num_classes: int, image_size: int, jitter_px: int, whole_fraction: float = 0.5,
                   generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """DB-SAM's training prompts, one box per slice and class.

    seg: [B, p, p] integer labels at patch resolution (< 0 outside the image). Each class of each slice gets,
    with probability ``whole_fraction`` or when it is absent from the slice, the box over the whole input (the
    automatic mode's prompt; its target is the class's whole mask, possibly empty); otherwise the box around the
    class's voxels (voxel centres in input pixels) with each side moved outward by a random 0..``jitter_px``
    pixels, clipped to the input (the official's perturbation).

    Returns boxes [B, C, 4] (x0, y0, x1, y1 in input pixels) and classes [B, C] (0-based).
    """
    b, p = seg.shape[0], seg.shape[-1]
    scale = image_size / p
    boxes = whole_boxes(b * num_classes, image_size).view(b, num_classes, 4)
    use_whole = torch.rand(b, num_classes, generator=generator) < whole_fraction
    jitter = torch.randint(0, jitter_px + 1, (b, num_classes, 4), generator=generator).float()
    for i in range(b):  # B x C boxes (a batch's slices and classes): per-mask bounds, not per-voxel work
        for c in range(num_classes):
            rows, cols = torch.nonzero(seg[i] == c + 1, as_tuple=True)
            if use_whole[i, c] or not rows.numel():
                continue
            lo = patch_to_input_coords(rows.min(), cols.min(), scale)
            hi = patch_to_input_coords(rows.max(), cols.max(), scale)
            box = torch.cat([lo - jitter[i, c, :2], hi + jitter[i, c, 2:]])
            boxes[i, c] = box.clamp(0, image_size)
    return boxes.to(seg.device), torch.arange(num_classes, device=seg.device).expand(b, num_classes)
