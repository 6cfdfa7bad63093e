"""Multi-scale deformable attention in pure PyTorch, DB-SAM's interaction between its ViT and conv branches.

The official code (AlfredQin/DB-SAM, ``src/models/ops/ms_deform_attn``) calls Deformable-DETR's compiled
CUDA op and ships neither its sources nor a fallback; its ``ms_deform_attn_core_pytorch`` is the
reference our :func:`multi_scale_deformable_attention` equals (bilinear ``grid_sample``, zero padding,
``align_corners=False``: a location (x, y) in [0, 1] reads pixel (x W - 0.5, y H - 0.5)).

Two pieces the release imports but lacks are reconstructions here, said so where they are:
``get_reference_points`` (:func:`reference_points`, ViT-Adapter's pixel centres) and ``MSMixFFN``.
"""
from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor) -> Tensor:
    """The official ``ms_deform_attn_core_pytorch``'s signature and numbers.

    value [N, S, M, D] (S = sum of H_l W_l, levels in order, rows within a level; M heads of D channels),
    spatial_shapes [L, 2] rows (H_l, W_l), sampling_locations [N, Lq, M, L, P, 2] in [0, 1] as (x, y),
    attention_weights [N, Lq, M, L, P] -> [N, Lq, M * D]. Levels are summed one at a time, which keeps
    one level's samples [N M, D, Lq, P] in memory instead of all levels' (DB-SAM: 20480 queries x 5 levels).
    """
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    grids = 2 * sampling_locations - 1
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, levels, points)
    out = value.new_zeros(n * m, d, lq)
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        start += h * w
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N M, Lq, P, 2]
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + (sampled * weights[..., level, :]).sum(-1)  # [N M, D, Lq]
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def reference_points(shapes: Sequence[Tuple[int, int]], device: Optional[torch.device] = None) -> Tensor:
    """Every query pixel's centre, (x, y) in [0, 1], level after level: [1, sum H W, 1, 2] (the one level
    axis broadcasts over the value levels). A reconstruction: the release imports ViT-Adapter's
    ``get_reference_points`` but does not ship it."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                              torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        points.append(torch.stack([(x.flatten() + 0.5) / w, (y.flatten() + 0.5) / h], -1))
    return torch.cat(points)[None, :, None]


class MSDeformAttn(nn.Module):
    """Deformable-DETR's multi-scale deformable attention module, with the official parameter names and
    initialisation (offsets start on a ring per head, attention uniform)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]  # on the square of radius 1
        ring = ring.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.0)

    def forward(self, query: Tensor, reference: Tensor, input_flatten: Tensor, input_spatial_shapes: Tensor,
                input_level_start_index: Tensor, input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query [N, Lq, C], reference [N or 1, Lq, 1 or L, 2] (x, y) in [0, 1], input_flatten [N, S, C]
        -> [N, Lq, C]. Offsets are in pixels of each level. The sampling runs in float32, as the official
        CUDA op's ``custom_fwd(cast_inputs=torch.float32)``."""
        n, lq, _ = query.shape
        shapes = [(int(h), int(w)) for h, w in input_spatial_shapes.tolist()]  # the CPU copy a CUDA op would read
        if sum(h * w for h, w in shapes) != input_flatten.shape[1]:
            raise ValueError("input_spatial_shapes do not add up to the input's length")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference.shape[-1] != 2:
            raise ValueError("reference points must be (x, y); DB-SAM uses no boxes")
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        autocast = query.device.type in ("cpu", "cuda")  # the meta device (memory estimates) has no autocast
        with torch.autocast(device_type=query.device.type, enabled=False) if autocast else contextlib.nullcontext():
            out = multi_scale_deformable_attention(value.float(), input_spatial_shapes, locations.float(),
                                                   weights.float())
        return self.output_proj(out.to(query.dtype))


class _DepthwiseConv(nn.Module):
    """Holds the depth-wise 3 x 3 convolution as ``dwconv.dwconv`` (ViT-Adapter's key layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x: Tensor, level_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        """x [B, sum H W, C]: each level's tokens as a map, convolved, back to tokens."""
        b, _, c = x.shape
        out, start = [], 0
        for h, w in level_shapes:
            level = x[:, start:start + h * w].transpose(1, 2).reshape(b, c, h, w)
            out.append(self.dwconv(level).flatten(2).transpose(1, 2))
            start += h * w
        return torch.cat(out, 1)


class MSMixFFN(nn.Module):
    """RECONSTRUCTED: the release imports ``MSMixFFN`` (on DB-SAM's main path) but does not ship it.
    Built as the ViT-Adapter ConvFFN that its call ``mlp(x, level_shapes)`` implies: fc1, a depth-wise
    3 x 3 convolution per level (one kernel shared by the levels), GELU, dropout, fc2, dropout."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: type = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        hidden, out = hidden_features or in_features, out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.dwconv = _DepthwiseConv(hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, out)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, level_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        """x [B, sum H W, C] -> [B, sum H W, C]."""
        x = self.drop(self.act(self.dwconv(self.fc1(x), [tuple(s)[-2:] for s in level_shapes])))
        return self.drop(self.fc2(x))


def _flatten_levels(levels: Sequence[Tensor]) -> Tensor:
    """NCHW maps -> tokens [B, sum H W, C], level after level."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in levels], 1)


class MSDeformCrossAttnBlock(nn.Module):
    """The official block: every query level attends to every value level (DB-SAM: the same five 64 x 64
    maps, ViT first, so it is self-attention over the pyramid), then the MSMixFFN, both residual."""

    def __init__(self, dim: int, num_heads: int, n_levels: int, n_points: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, drop_path_attn: float = 0.0, drop_path_ffn: float = 0.0,
                 expand_ratio: float = 4.0, query_norm: bool = False, ffn_pre_norm: bool = False) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim) if query_norm else nn.Identity()
        self.value_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points)
        self.dropout_attn = nn.Dropout(attn_drop)
        self.drop_path_attn = DropPath(drop_path_attn) if drop_path_attn > 0 else nn.Identity()
        self.drop_path_ffn = DropPath(drop_path_ffn) if drop_path_ffn > 0 else nn.Identity()
        self.ffn_pre_norm = nn.LayerNorm(dim) if ffn_pre_norm else nn.Identity()
        self.mlp = MSMixFFN(dim, hidden_features=int(dim * expand_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, query: List[Tensor], value: List[Tensor]) -> List[Tensor]:
        """query, value: lists of NCHW maps [B, C, H_i, W_i] -> the query maps, updated."""
        q_shapes = [tuple(x.shape[-2:]) for x in query]
        h, w = value[0].shape[-2:]
        if value[0].shape != value[-1].shape:  # the official: level i at 1 / 2^i of the first
            v_shapes = [(h // 2 ** i, w // 2 ** i) for i in range(len(value))]
        else:
            v_shapes = [(h, w)] * len(value)
        shapes = torch.as_tensor(v_shapes, dtype=torch.long, device="cpu")  # read as numbers, also under meta
        starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
        q = _flatten_levels(query)
        v = self.value_norm(_flatten_levels(value))
        ref = reference_points(q_shapes, q.device)
        x = q + self.drop_path_attn(self.dropout_attn(self.attn(self.query_norm(q), ref, v, shapes, starts)))
        x = x + self.drop_path_ffn(self.mlp(self.ffn_pre_norm(x), q_shapes))
        out, start = [], 0
        for (qh, qw), level in zip(q_shapes, query):
            out.append(x[:, start:start + qh * qw].transpose(1, 2).reshape(level.shape))
            start += qh * qw
        return out
