"""Channels to SAM's RGB input: one channel repeats, two or three map onto R, G, B.

Preprocessed data keeps nnU-Net's C channels (each already mapped to 0..255); the trainer and
predictor mix them into 3 channels with the 3xC matrix the planner records, right before the
resize to SAM's input. A matrix keeps the rule in the plans instead of in code.
"""
from typing import List

import torch

MAX_CHANNELS = 3


def channel_to_rgb_matrix(num_channels: int) -> List[List[float]]:
    """The 3xC matrix with ``rgb = M @ channels``.

    1 channel: grey repeated to R, G, B (what the official DeSAM does).
    2 channels: R and G are the two channels, B their mean (keeps both visible in every channel pair).
    3 channels: identity.
    """
    if num_channels == 1:
        return [[1.0], [1.0], [1.0]]
    if num_channels == 2:
        return [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    if num_channels == 3:
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    raise ValueError(f"{num_channels} input channels: DeSAM takes 1 to {MAX_CHANNELS} channels (mapped onto RGB)")


def to_rgb(x: torch.Tensor, matrix: List[List[float]]) -> torch.Tensor:
    """Mix channels into RGB. ``x`` is [B, C, H, W]; returns [B, 3, H, W] in x's dtype."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    if m.shape[1] != x.shape[1]:
        raise ValueError(f"the plans map {m.shape[1]} channels to RGB but the input has {x.shape[1]}")
    return torch.einsum("rc,bchw->brhw", m, x)


def to_network_input(patches: torch.Tensor, matrix: List[List[float]], image_size: int) -> torch.Tensor:
    """Patches [B, C, p, p] (each channel already 0..255) -> SAM's input [B, 3, S, S], S = image_size.

    Bilinear resizing is a convex combination, so the result stays in 0..255.
    """
    rgb = to_rgb(patches, matrix)
    if rgb.shape[-2:] == (image_size, image_size):
        return rgb
    return torch.nn.functional.interpolate(rgb, size=(image_size, image_size), mode="bilinear", align_corners=False)


def zscore_per_image(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> each image and channel z-scored (population std), as the official DAPSAM feeds its
    network; a constant channel becomes 0."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) / torch.where(std > 0, std, torch.ones_like(std))


def network_input(patches: torch.Tensor, matrix: List[List[float]], image_size: int, normalisation: str) -> torch.Tensor:
    """Patches [B, C, p, p] (0..255) -> the network's input [B, 3, S, S] as the plans' ``input_normalisation``
    says: "network" keeps 0..255 (the network normalises, as DeSAM), "per_image_zscore" z-scores (the
    official DAPSAM), "unit_range" divides by 255 (LiteMedSAM's range)."""
    x = to_network_input(patches, matrix, image_size)
    if normalisation == "network":
        return x
    if normalisation == "unit_range":
        return x / 255.0
    if normalisation == "per_image_zscore":
        return zscore_per_image(x)
    raise ValueError(f"unknown input normalisation {normalisation!r} in the plans")
