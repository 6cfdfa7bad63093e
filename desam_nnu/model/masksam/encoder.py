"""MaskSAM's image encoder: SAM's ViT run on every slice of a 3D patch, with a learned slice embedding and two
slice-mixing adapters per block (official ``ImageEncoderViTGlobalOutputAdapter3DTPosEmbedTFusionMiddleDWConv``,
bxie9/MaskSAM commit c6860c5). It returns the four global blocks' outputs beside the neck's, the inputs of
MaskSAM's prompt generator.

Built on segment_anything's ``ImageEncoderViT`` and ``Block`` (their patch embedding, attention with relative
positions, windows and neck), so SAM checkpoints load by SAM's own key names; ours adds ``temporal_embedding``
and each block's ``Space_Adapter`` and ``MLP_Adapter``, named as the official ones.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence

import torch
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from torch import Tensor, nn

from .adapters import SliceConvAdapter

NORM = partial(nn.LayerNorm, eps=1e-6)  # SAM's builder's


class SliceAdaptedBlock(Block):
    """SAM's ViT block with the official adapters and order:

    - windows are cut BEFORE ``norm1`` (official; SAM cuts after), so the zero padding of a grid that the window
      does not divide is normalised to ``norm1.bias`` and enters attention and the adapter as tokens;
    - ``Space_Adapter`` (with its skip) follows attention, inside the window partition;
    - ``MLP_Adapter`` (no skip) runs beside the MLP on the same normalised input, scaled by ``scale`` (0.5).
    """

    def __init__(self, dim: int, num_heads: int, num_frames: int, scale: float = 0.5, **block_kw) -> None:
        super().__init__(dim, num_heads, **block_kw)
        self.num_frames, self.scale = num_frames, scale
        self.MLP_Adapter = SliceConvAdapter(dim, num_frames=num_frames, skip_connect=False)
        self.Space_Adapter = SliceConvAdapter(dim, num_frames=num_frames)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B*T, h, w, D] in (volume, slice) order -> the same shape."""
        shortcut = x
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.Space_Adapter(self.attn(self.norm1(x)))
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class SliceAdaptedViT(ImageEncoderViT):
    """``forward(images [B, 3, T, S, S])`` -> ``[g1, g2, g3, g4, neck]``: the global blocks' outputs
    ``[B*T, D, S/16, S/16]`` (raw block outputs, no norm) and the neck's ``[B*T, 256, S/16, S/16]``, batch in
    (volume, slice) order. ``temporal_embedding`` [1, T, D] (zero at start) is added once, after the absolute
    position embedding (cropped to the token grid, as the official code does for inputs under 1024 px)."""

    def __init__(self, num_frames: int, depth: int = 12, embed_dim: int = 768, num_heads: int = 12,
                 global_attn_indexes: Sequence[int] = (2, 5, 8, 11), img_size: int = 1024, patch_size: int = 16,
                 mlp_ratio: float = 4.0, out_chans: int = 256, window_size: int = 14, scale: float = 0.5) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=0,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, out_chans=out_chans, qkv_bias=True,
                         norm_layer=NORM, use_rel_pos=True, window_size=window_size)
        if len(global_attn_indexes) != 4:
            raise ValueError(f"MaskSAM's prompt generator reads 4 global blocks; got {list(global_attn_indexes)}")
        self.embed_dim, self.num_frames, self.global_attn_indexes = embed_dim, num_frames, tuple(global_attn_indexes)
        grid = img_size // patch_size
        for i in range(depth):
            windowed = i not in global_attn_indexes
            self.blocks.append(SliceAdaptedBlock(
                embed_dim, num_heads, num_frames, scale, mlp_ratio=mlp_ratio, qkv_bias=True,
                norm_layer=NORM, use_rel_pos=True,
                window_size=window_size if windowed else 0,
                input_size=(window_size, window_size) if windowed else (grid, grid)))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, embed_dim))

    def forward(self, x: Tensor) -> List[Tensor]:
        b, c, t, h, w = x.shape
        if t != self.num_frames:
            raise ValueError(f"a patch of {t} slices into an encoder built for T = {self.num_frames}")
        x = self.patch_embed(x.transpose(1, 2).reshape(b * t, c, h, w))  # [B*T, h/16, w/16, D]
        n1, n2 = x.shape[1:3]
        x = x + self.pos_embed[:, :n1, :n2, :]
        x = (x.reshape(b, t, n1, n2, -1) + self.temporal_embedding[:, :, None, None, :]).reshape(b * t, n1, n2, -1)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.global_attn_indexes:
                outputs.append(x.permute(0, 3, 1, 2))
        outputs.append(self.neck(x.permute(0, 3, 1, 2)))
        return outputs
