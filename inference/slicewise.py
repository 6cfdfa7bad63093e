"""Slice-by-slice DeSAM prediction of one preprocessed volume, in nnU-Net's conventions.

A volume ``[C, Z, H, W]`` (nnU-Net's preprocessed, transposed layout: slices along axis 0) is
predicted slice by slice: each slice is tiled with nnU-Net's sliding-window steps and Gaussian
weights, each tile is encoded once, prompted (DeSAM's automatic grid mode via ``decode_grid``, or
the whole-tile box), and its per-class sigmoid probabilities are stitched back.

The result is returned as nnU-Net "logits" ``[1 + C, Z, H, W]``: ``log`` of (0.5, p_1, ..., p_C).
nnU-Net's export takes the argmax, which gives class c where p_c >= 0.5 and is the largest, and
background elsewhere: DeSAM's multi-label sigmoid rule, through nnU-Net's resampling and export.
"""
from typing import Iterator, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from desam_nnu.config import DeSAMConfig
from desam_nnu.prompts import make_point_grid, whole_boxes
from desam_nnu.rgb import to_network_input

EPS = 1e-6


def _tiles(height: int, width: int, patch: int, step: float) -> Iterator[Tuple[int, int]]:
    ys, xs = compute_steps_for_sliding_window((max(height, patch), max(width, patch)), (patch, patch), step)
    for y in ys:
        for x in xs:
            yield y, x


@torch.no_grad()
def predict_tiles(network, tiles: torch.Tensor, cfg: DeSAMConfig, mode: str, grid_points: int, iou_thresh: float,
                  top_k: int) -> torch.Tensor:
    """tiles [T, C_in, p, p] (0..255) -> per-class probabilities [T, C, p, p]."""
    features = network.encode(to_network_input(tiles, cfg.channel_to_rgb, cfg.image_size))
    if mode == "box":
        logits, _ = network.decode(features, boxes=whole_boxes(len(tiles), cfg.image_size).to(tiles.device),
                                   image_index=torch.arange(len(tiles)))
    elif mode == "grid":
        grid = make_point_grid(grid_points, cfg.image_size, device=tiles.device)
        logits = torch.stack([network.decode_grid([f[t:t + 1] for f in features], grid, iou_thresh=iou_thresh,
                                                  top_k=top_k).mask_logits for t in range(len(tiles))])
    else:
        raise ValueError(f"prompt mode {mode!r}: use 'grid' or 'box'")
    logits = F.interpolate(logits.float(), size=tiles.shape[-2:], mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)


@torch.no_grad()
def predict_volume(network, data: np.ndarray, cfg: DeSAMConfig, mode: str = "grid", grid_points: int = 9,
                   iou_thresh: float = 0.5, top_k: int = 1, tile_step: float = 0.5,
                   device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """data [C_in, Z, H, W] preprocessed -> nnU-Net logits [1 + C, Z, H, W] (see module docstring)."""
    patch = cfg.patch_size[0]
    _, depth, height, width = data.shape
    ph, pw = max(height, patch), max(width, patch)
    gaussian = compute_gaussian((patch, patch), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                device=device)
    probs = torch.zeros((cfg.num_classes, depth, height, width), dtype=torch.float32)
    for z in range(depth):
        padded = torch.zeros((data.shape[0], ph, pw), dtype=torch.float32)
        padded[:, :height, :width] = torch.from_numpy(np.asarray(data[:, z], dtype=np.float32))
        origins = list(_tiles(height, width, patch, tile_step))
        tiles = torch.stack([padded[:, y:y + patch, x:x + patch] for y, x in origins]).to(device)
        tile_probs = predict_tiles(network, tiles, cfg, mode, grid_points, iou_thresh, top_k)
        acc = torch.zeros((cfg.num_classes, ph, pw), device=device)
        weight = torch.zeros((ph, pw), device=device)
        for (y, x), p in zip(origins, tile_probs):
            acc[:, y:y + patch, x:x + patch] += p * gaussian
            weight[y:y + patch, x:x + patch] += gaussian
        probs[:, z] = (acc / weight).cpu()[:, :height, :width]
    background = torch.full((1, depth, height, width), 0.5)
    return torch.log(torch.cat([background, probs]).clamp_min(EPS))
