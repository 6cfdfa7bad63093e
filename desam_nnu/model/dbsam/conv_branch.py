"""DB-SAM's conv branch (the official ``LFIP0``, ``efficient_featurized_image_pyramid_net.py``): the input
image resized to 512, 256, 128 and 64 px, each through a small conv stack to a 64 x 64 map of the ViT's
width, the four maps the deformable attention mixes with the ViT's tokens."""
from __future__ import annotations

from typing import Dict, Sequence

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

GRID = 64  # the official: every level ends on the ViT's 64 x 64 token grid (1024 px input)
WIDTHS = (128, 256, 512)  # the official widths of the three conv stages
# per level, the stride of the three 3 x 3 convolutions: level l resizes the input to GRID * 2^(4 - l) (512, 256,
# 128, 64), and its strides bring every level to GRID
STRIDES = {1: (2, 2, 2), 2: (2, 2, 1), 3: (2, 1, 1), 4: (1, 1, 1)}


def level_size(level: int, grid: int = GRID) -> int:
    """The edge level ``level`` resizes the input to (the official: 512, 256, 128, 64)."""
    return grid * 2 ** (4 - level)


class ConvBlock(nn.Module):
    """Conv (no bias), then BatchNorm (eps 1e-5, momentum 0.01; the official's SyncBatchNorm) and ReLU when
    asked: the official block's key layout (``conv``, ``bn``)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 relu: bool = True, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x) if self.bn is not None else x
        return self.relu(x) if self.relu is not None else x


class Resize(nn.Module):
    """torchvision's ``Resize(size)`` on a batch: the shorter edge to ``size``, bilinear,
    ``align_corners=False``. ``antialias`` True is torchvision's default since 0.17 (the official
    code's own torchvision 0.14 did not antialias tensors); it moves the outputs by about 1."""

    def __init__(self, size: int, antialias: bool = True) -> None:
        super().__init__()
        self.size, self.antialias = size, antialias

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        short, long = (h, w) if h <= w else (w, h)
        other = int(self.size * long / short)
        size = (self.size, other) if h <= w else (other, self.size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)


def _branch(level: int, in_planes: int, embed_dim: int, layer_norm: bool, antialias: bool, grid: int,
            widths: Sequence[int]) -> nn.Sequential:
    (s1, s2, s3), (w1, w2, w3) = STRIDES[level], widths
    return nn.Sequential(
        Resize(level_size(level, grid), antialias),
        ConvBlock(in_planes, w1, 3, s1, 1), ConvBlock(w1, w1, 1),
        ConvBlock(w1, w2, 3, s2, 1), ConvBlock(w2, w2, 1),
        ConvBlock(w2, w3, 3, s3, 1), ConvBlock(w3, w3, 1),
        ConvBlock(w3, embed_dim, 1, relu=False, bn=False),
        LayerNorm2d(embed_dim, eps=1e-6) if layer_norm else nn.Identity())


class ConvBranch(nn.Module):
    """The official LFIP0, with its constructor's names: ``lcb{level}`` for each level of
    ``ms_feats_levels_index`` (DB-SAM: 1, 2, 3, 4). ``grid`` and ``widths`` are ours (official: 64 and 128, 256,
    512): the token grid of a smaller input or backbone, and narrower convolutions for it."""

    def __init__(self, in_planes: int, embed_dim: int = 768, ms_feats_levels_index: Sequence[int] = (3, 4),
                 layer_norm: bool = True, antialias: bool = True, grid: int = GRID,
                 widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        self.ms_feats_levels_index = tuple(ms_feats_levels_index)
        for level in self.ms_feats_levels_index:
            self.add_module(f"lcb{level}", _branch(level, in_planes, embed_dim, layer_norm, antialias, grid,
                                                   tuple(widths)))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """x [B, in_planes, S, S] (the encoder's normalised input; official 1024) -> {"c1": [B, grid, grid, D],
        ...}, channels last."""
        return {f"c{level}": getattr(self, f"lcb{level}")(x).permute(0, 2, 3, 1).contiguous()
                for level in self.ms_feats_levels_index}
