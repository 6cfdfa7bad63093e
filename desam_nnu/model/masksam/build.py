"""Assembling MaskSAM from its parts, with the official builder's fixed sizes (``_build_sam`` in bxie9/MaskSAM's
``segment_anything/build_sam.py``): a 256-wide prompt side, 2 two-way layers of 8 heads, MLP 2048, window 14."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .decoder import ClassifierMaskDecoder, SliceAdaptedTwoWayTransformer, SlicePromptEncoder
from .encoder import SliceAdaptedViT
from .network import MaskSAM, SliceAdaptedSam

PROMPT_DIM = 256


def build_slice_adapted_sam(num_frames: int, num_classes: int, num_queries: int = 8, embed_dim: int = 768,
                            depth: int = 12, num_heads: int = 12,
                            global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                            image_size: int = 1024) -> SliceAdaptedSam:
    """SAM's three parts with MaskSAM's additions; the ViT's sizes default to ViT-B's."""
    grid = (image_size // 16, image_size // 16)
    encoder = SliceAdaptedViT(num_frames, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                              global_attn_indexes=global_attn_indexes, img_size=image_size, out_chans=PROMPT_DIM)
    prompt_encoder = SlicePromptEncoder(PROMPT_DIM, grid, (image_size, image_size), 16, num_frames)
    transformer = SliceAdaptedTwoWayTransformer(num_frames, num_queries, grid, depth=2, embedding_dim=PROMPT_DIM,
                                                num_heads=8, mlp_dim=2048)
    return SliceAdaptedSam(encoder, prompt_encoder, ClassifierMaskDecoder(transformer, num_classes, PROMPT_DIM))


def build_masksam(input_channels: int, num_classes: int, num_frames: int, patch: Tuple[int, int],
                  num_queries: int = 8, image_size: Optional[int] = None, **vit) -> MaskSAM:
    """The ACDC layout: SAM's input is 4x the patch (``image_size``, default 4 * patch; the network refuses
    another)."""
    sam = build_slice_adapted_sam(num_frames, num_classes, num_queries, image_size=image_size or 4 * patch[0],
                                  **vit)
    return MaskSAM(sam, input_channels, num_classes, patch, num_queries)
