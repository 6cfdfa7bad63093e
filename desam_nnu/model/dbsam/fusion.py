"""DB-SAM's fusion of its two branches (the official ``MultiConvFeatsDANE``, ``aggregation_blocks.py``): per
pixel and channel a softmax over the sources (the conv maps, then the ViT map) weighs them, and an MLP
refines the sum."""
from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn


def _gate(dim: int, reduction: int) -> nn.Sequential:
    hidden = dim // reduction
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.SiLU(inplace=True), nn.LayerNorm(hidden),
                         nn.Linear(hidden, dim, bias=False))


class FeatureFusion(nn.Module):
    """The official MultiConvFeatsDANE, with its constructor's names. Both official configs set
    ``num_conv=5`` but pass four conv maps, so ``conv_fc.4`` exists (and loads) but never runs."""

    def __init__(self, dim: int, num_conv: int = 3, reduction: int = 12, drop_path: float = 0.3,
                 ffn_type: str = "mlp", expand_ratio: float = 4.0) -> None:
        super().__init__()
        if ffn_type != "mlp":
            raise ValueError(f"ffn_type {ffn_type!r}: DB-SAM's configurations use 'mlp'")
        self.vit_fc = _gate(dim, reduction)
        self.conv_fc = nn.ModuleList(_gate(dim, reduction) for _ in range(num_conv))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, int(dim * expand_ratio), dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x_vit: Tensor, x_cnn: Sequence[Tensor]) -> Tensor:
        """x_vit [B, H, W, C] and the conv maps, each [B, H, W, C] -> [B, H, W, C]."""
        b, h, w, c = x_vit.shape
        sources = [x.reshape(b, h * w, c) for x in x_cnn] + [x_vit.reshape(b, h * w, c)]
        gates = [fc(x) for fc, x in zip(self.conv_fc, sources[:-1])] + [self.vit_fc(sources[-1])]
        weights = torch.stack(gates, -1).softmax(-1)  # [B, HW, C, sources]
        out = (torch.stack(sources, -1) * weights).sum(-1)
        out = out + self.drop_path(self.ffn(self.ffn_norm(out)))
        return out.view(b, h, w, c)
