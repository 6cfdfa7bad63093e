"""MaskSAM's adapters: the bottlenecks it inserts into SAM's encoder blocks and two-way transformer to mix the
T slices of a 3D patch (bxie9/MaskSAM, commit c6860c5, ``segment_anything/modeling/common.py``).

Both compute ``x + fc2(a + mix(a))`` (or without the ``x +``), with ``a = GELU(fc1(x))`` a quarter as wide, so
``fc2`` acts on the sum of the bottleneck and its slice-mixed copy (official). No layer is zero-initialised:
the adapters change SAM's outputs from the first step, as the official ones do. Attribute names are the
official ones (``D_fc1``, ``T_DWconv``, ...), so an official state dict loads key for key.

Token batches are ordered (b, t, q): volume, slice, query (q = 1 in the encoder), as the official code
orders them. The official reshapes split that batch as ``(b d q)`` with ``d`` = T whatever the batch holds:
in the encoder's windowed blocks the batch is (b, t, window), so its T "slices" are T consecutive windows
(quirk kept, see :class:`SliceConvAdapter`).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channels of ``[N, C, D, H, W]`` (biased variance, eps 1e-6), as the official one."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


def _split(x: Tensor, num_frames: int, num_queries: int) -> Tuple[int, ...]:
    """(groups, T, Q) of a token batch ordered (b, t, q); refuses a batch that T x Q does not divide."""
    if x.shape[0] % (num_frames * num_queries):
        raise ValueError(f"a batch of {x.shape[0]} token maps is not (volumes x {num_frames} slices x "
                         f"{num_queries} queries)")
    return x.shape[0] // (num_frames * num_queries), num_frames, num_queries


class SliceConvAdapter(nn.Module):
    """A depth-wise 3x3x3 convolution over (slice, row, column) in the bottleneck (official
    ``AdapterTFusion3DMiddleDWConvNorm``; with ``num_queries`` > 1 the decoder's
    ``AdapterTFusion3DMiddleDWConvNormTQReshape``): fc1, GELU, DW-conv, LayerNorm3d, GELU, fc2 of the sum.

    Input ``[B*T*Q, h, w, D]`` (token grids) or ``[B*T*Q, h*w, D]`` (flat tokens of an ``size`` grid); the same
    shape comes out. The convolution's depth axis is the T consecutive entries of the batch: in a windowed
    encoder block (``[B*T*windows, 14, 14, D]``) those are T consecutive windows in (slice, window row, window
    column) order, not one window over T slices (official quirk, kept), and its 3x3 support ends at the window's
    border.
    """

    def __init__(self, D_features: int, mlp_ratio: float = 0.25, num_frames: int = 4, num_queries: int = 1,
                 skip_connect: bool = True, size: Tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        hidden = int(D_features * mlp_ratio)
        self.skip_connect, self.num_frames, self.num_queries, self.size = skip_connect, num_frames, num_queries, size
        self.act = nn.GELU()
        self.D_fc1 = nn.Linear(D_features, hidden)
        self.D_fc2 = nn.Linear(hidden, D_features)
        self.T_DWconv = nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.norm = LayerNorm3d(hidden)

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(self.D_fc1(x))
        groups, t, q = _split(a, self.num_frames, self.num_queries)
        h, w = a.shape[1:3] if a.dim() == 4 else self.size
        c = a.shape[-1]
        # [(g t q), h, w, c] -> [(g q), c, t, h, w]
        v = a.reshape(groups, t, q, h, w, c).permute(0, 2, 5, 1, 3, 4).reshape(groups * q, c, t, h, w)
        v = self.act(self.norm(self.T_DWconv(v)))
        v = v.reshape(groups, q, c, t, h, w).permute(0, 3, 1, 4, 5, 2).reshape(a.shape)
        y = self.D_fc2(a + v)
        return x + y if self.skip_connect else y


class SliceMLPAdapter(nn.Module):
    """An MLP across the T slices in the bottleneck (official ``AdapterTFusionMiddleMLPTQReshape``): fc1, GELU,
    then per query and token Linear(T, 4T), GELU, Linear(4T, T) over the slices, then fc2 of the sum.

    Input ``[B*T*Q, N, D]`` (the two-way transformer's query tokens, ordered (b, t, q)) or ``[B*T*Q, h, w, D]``;
    the same shape comes out. Its ``T_fc`` sizes tie a trained model to its T.
    """

    def __init__(self, D_features: int, mlp_ratio: float = 0.25, num_frames: int = 4, num_queries: int = 8,
                 t_mlp_ratio: int = 4, skip_connect: bool = True) -> None:
        super().__init__()
        hidden = int(D_features * mlp_ratio)
        self.skip_connect, self.num_frames, self.num_queries = skip_connect, num_frames, num_queries
        self.act = nn.GELU()
        self.D_fc1 = nn.Linear(D_features, hidden)
        self.D_fc2 = nn.Linear(hidden, D_features)
        self.T_fc1 = nn.Linear(num_frames, int(num_frames * t_mlp_ratio))
        self.T_fc2 = nn.Linear(int(num_frames * t_mlp_ratio), num_frames)

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(self.D_fc1(x))
        groups, t, q = _split(a, self.num_frames, self.num_queries)
        c = a.shape[-1]
        # [(g t q), n, c] -> [(g q), n, c, t]
        v = a.reshape(groups, t, q, -1, c).permute(0, 2, 3, 4, 1)
        v = self.T_fc2(self.act(self.T_fc1(v)))
        v = v.permute(0, 4, 1, 2, 3).reshape(a.shape)
        y = self.D_fc2(a + v)
        return x + y if self.skip_connect else y
