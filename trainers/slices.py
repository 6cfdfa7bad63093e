"""Training items for DeSAM: every tile of every slice of nnU-Net's preprocessed volumes.

nnU-Net's 2D data loader crops a random patch around a random slice each time, which suits online
augmentation but not a feature cache: cached encoder features must belong to fixed patches. So
the items are fixed: each slice along the planned axis (axis 0 of the preprocessed, transposed
array) is cut into patch-sized tiles placed by nnU-Net's own sliding-window step rule with step 1
(the fewest tiles that cover the slice; smaller slices are padded). Images are padded with 0
(SAM's black), labels with -1 (outside the image: no prompt is placed there, no loss is taken).
Both the cache and online encoding use the same items in the same order.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

PAD_LABEL = -1


def tile_origins(height: int, width: int, patch: int) -> List[Tuple[int, int]]:
    """Top-left corners of the tiles covering a height x width slice (nnU-Net's step rule, step 1)."""
    ys, xs = compute_steps_for_sliding_window((max(height, patch), max(width, patch)), (patch, patch), 1.0)
    return [(y, x) for y in ys for x in xs]


def cut_patch(image: np.ndarray, seg: np.ndarray, y0: int, x0: int, patch: int) -> Tuple[np.ndarray, np.ndarray]:
    """image [C, H, W], seg [H, W] -> [C, p, p] float32 (0-padded) and [p, p] int8 (-1-padded).

    nnU-Net marks voxels outside the nonzero mask with -1 too; those count as background here.
    """
    img = np.zeros((image.shape[0], patch, patch), np.float32)
    lab = np.full((patch, patch), PAD_LABEL, np.int8)
    part_img = image[:, y0:y0 + patch, x0:x0 + patch]
    part_seg = seg[y0:y0 + patch, x0:x0 + patch]
    h, w = part_seg.shape
    img[:, :h, :w] = part_img
    lab[:h, :w] = np.maximum(part_seg, 0)
    return img, lab


@dataclass(frozen=True)
class ItemIndex:
    """All training items: case name per item, (slice, y0, x0) per item and whether it has foreground."""

    cases: Tuple[str, ...]
    case_of_item: np.ndarray  # [N] index into cases
    local_index: np.ndarray  # [N] position of the item within its case
    position: np.ndarray  # [N, 3] slice, y0, x0
    has_foreground: np.ndarray  # [N] bool

    def items_of(self, case: str) -> np.ndarray:
        return np.flatnonzero(self.case_of_item == self.cases.index(case))


def case_items(seg: np.ndarray, patch: int) -> Tuple[np.ndarray, np.ndarray]:
    """seg [Z, H, W] of one case -> positions [n, 3] (slice, y0, x0) and foreground flags [n]."""
    origins = tile_origins(seg.shape[1], seg.shape[2], patch)
    positions, fg = [], []
    for z in range(seg.shape[0]):
        for y0, x0 in origins:
            positions.append((z, y0, x0))
            fg.append(bool((seg[z, y0:y0 + patch, x0:x0 + patch] > 0).any()))
    return np.asarray(positions, np.int32).reshape(-1, 3), np.asarray(fg, bool)


def build_item_index(dataset, identifiers: List[str], patch: int) -> ItemIndex:
    """Read each case's labels once (nnU-Net dataset class) and list its items."""
    cases, owner, local, positions, fg = [], [], [], [], []
    for k in identifiers:
        _, seg, _, _ = dataset.load_case(k)
        pos, has_fg = case_items(np.asarray(seg[0]), patch)
        owner.append(np.full(len(pos), len(cases)))
        local.append(np.arange(len(pos)))
        cases.append(k)
        positions.append(pos)
        fg.append(has_fg)
    return ItemIndex(tuple(cases), np.concatenate(owner), np.concatenate(local), np.concatenate(positions),
                     np.concatenate(fg))


def load_case_patches(dataset, case: str, positions: np.ndarray, patch: int) -> Dict[str, np.ndarray]:
    """Images [n, C, p, p] and labels [n, p, p] of the given items of one case."""
    data, seg, _, _ = dataset.load_case(case)
    images, labels = [], []
    cached_z, img_slice, seg_slice = None, None, None
    for z, y0, x0 in positions:
        if z != cached_z:  # blosc2 decompresses only the chunks of this slice
            img_slice, seg_slice, cached_z = np.asarray(data[:, z]), np.asarray(seg[0, z]), z
        img, lab = cut_patch(img_slice, seg_slice, int(y0), int(x0), patch)
        images.append(img)
        labels.append(lab)
    return {"images": np.stack(images), "seg": np.stack(labels)}
