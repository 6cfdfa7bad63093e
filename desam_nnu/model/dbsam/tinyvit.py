"""DB-SAM on LiteMedSAM's TinyViT (``medsam_lite``): ours, no official counterpart.

The official mixes SAM's ViT, whose twelve blocks share one width and one 64 x 64 token grid, with the conv
branch after each quarter of its blocks. TinyViT's stages differ in width (64, 128, 160, 320) and grid; the
three whose output lies on the final S/4 grid (stages 1-3: 160, 320 and 320 channels) are where the two
branches meet. Each stage's tokens are projected to the adapter's width (``inject``), mixed with the conv
branch's four maps by two deformable-attention blocks over the five levels, exactly as the official, and the
result is projected back and added to the stage's tokens (``extract``). After the last stage the fusion
(:class:`FeatureFusion`) and a LayerNorm give the adapter's map, projected (``out``) and added to TinyViT's last
tokens before its neck. ``extract`` and ``out`` start at zero, so the untrained adapter leaves LiteMedSAM's
embedding exactly as it is: training starts from the pretrained model.

The conv branch is the official's on the S/4 grid (the input resized to 2S, S, S/2, S/4), narrower (32, 64,
128 channels), and the adapter is 32 wide with 2 heads of 16 channels. Measured on this 2-core CPU at 128 px,
batch 8, a training step (forward and backward) took 54 s with a 128-wide adapter (8 heads), 23 s with 64 (4
heads) and 12.6 s with 32, of which TinyViT itself (forward, and backward through the stages after the first
interaction) is about 7 s; the deformable sampling (``grid_sample`` and its weighted sum, the official's
arithmetic) is most of the rest. At 32 a 30-minute budget trains about as many iterations as DAPSAM's.

Keys: LiteMedSAM's ``image_encoder.*`` unchanged (its packaged weights load strictly), plus
``image_encoder.adapter.*``.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..tinyvit import TinyViTFeatureEncoder
from .conv_branch import ConvBranch
from .deform_attn import MSDeformAttn, MSDeformCrossAttnBlock
from .fusion import FeatureFusion
from .network import init_weights

ADAPTER_DIM, ADAPTER_HEADS = 32, 2
CONV_WIDTHS = (32, 64, 128)


class LiteAdapter(nn.Module):
    """The official adapter's parts (conv branch, level embeddings, two deformable blocks per interaction, fusion,
    norm) at ``dim`` channels, with the projections between TinyViT's stages and that width."""

    def __init__(self, stage_channels: Sequence[int], out_channels: int, grid: int, dim: int = ADAPTER_DIM,
                 num_heads: int = ADAPTER_HEADS, n_points: int = 4, drop: float = 0.1, drop_path: float = 0.3,
                 expand_ratio: float = 4.0, conv_widths: Sequence[int] = CONV_WIDTHS, antialias: bool = True) -> None:
        super().__init__()
        self.spatial_prior_module = ConvBranch(3, dim, (1, 2, 3, 4), layer_norm=True, antialias=antialias, grid=grid,
                                               widths=conv_widths)
        self.level_embed = nn.Parameter(torch.zeros(4, dim))
        block = partial(MSDeformCrossAttnBlock, dim, num_heads, 5, n_points, drop, drop, drop_path, drop_path,
                        expand_ratio, query_norm=True, ffn_pre_norm=True)
        self.inject = nn.ModuleList(nn.Linear(c, dim) for c in stage_channels)
        self.self_attn_blocks = nn.ModuleList(block() for _ in stage_channels)
        self.self_attn_blocks1 = nn.ModuleList(block() for _ in stage_channels)
        self.extract = nn.ModuleList(nn.Linear(dim, c) for c in stage_channels)
        self.aggregation = FeatureFusion(dim, num_conv=4, drop_path=drop_path)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_channels)
        self.apply(init_weights)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        for m in list(self.extract) + [self.out]:  # the untrained adapter adds nothing: LiteMedSAM's embedding
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)


class DBSAMTinyViT(TinyViTFeatureEncoder):
    """images [B, 3, S, S] in 0..1 (LiteMedSAM's input) -> the adapted embedding [B, 256, S/4, S/4]."""

    def __init__(self, img_size: int = 256, adapter_dim: int = ADAPTER_DIM, adapter_heads: int = ADAPTER_HEADS,
                 conv_widths: Sequence[int] = CONV_WIDTHS, antialias: bool = True, **kwargs: Any) -> None:
        super().__init__(img_size, feature_stages=(), **kwargs)
        grid = self.stage_resolutions[-1]
        self.interaction_stages = tuple(s for s, r in enumerate(self.stage_resolutions) if r == grid)
        self.adapter = LiteAdapter([self.stage_channels[s] for s in self.interaction_stages], self.stage_channels[-1],
                                   grid[0], adapter_dim, adapter_heads, conv_widths=conv_widths, antialias=antialias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._check_input(x)
        a = self.adapter
        conv = a.spatial_prior_module(x)
        maps = [(conv[f"c{i + 1}"] + a.level_embed[i]).permute(0, 3, 1, 2) for i in range(4)]  # [B, D, g, g]
        tokens = self.patch_embed(x)
        k, q = 0, None
        for s, layer in enumerate(self.layers):
            tokens = layer(tokens)  # [B, h * w, C_s]
            if s not in self.interaction_stages:
                continue
            q = a.inject[k](tokens).transpose(1, 2).reshape(tokens.shape[0], -1, *self.stage_resolutions[s])
            levels = a.self_attn_blocks[k]([q] + maps, [q] + maps)
            levels = a.self_attn_blocks1[k](levels, levels)
            q, maps = levels[0], levels[1:]
            tokens = tokens + a.extract[k](q.flatten(2).transpose(1, 2))
            k += 1
        fused = a.aggregation(q.permute(0, 2, 3, 1), [m.permute(0, 2, 3, 1) for m in maps])  # [B, g, g, D]
        tokens = tokens + a.out(a.norm(fused)).flatten(1, 2)
        return self.neck(self._tokens_to_map(tokens, len(self.layers) - 1))
