"""DAPSAM on LiteMedSAM's TinyViT (``medsam_lite``): ours, no official counterpart.

The official adapts SAM's ViT, whose blocks all share one width and one token grid. TinyViT has four
stages of different widths and grids (see ``desam_nnu.model.tinyvit``); its attention stages (1-3: 128,
160 and 320 channels) get DAPSAM's adapters stage by stage: one LAdapter per stage (its embedding
generator on the stage's input tokens, TinyViT having no position embedding; one prompt MLP per
block, added before the block) and a block adapter beside each block's MLP, on the MLP's own
LayerNorm. Both read tokens and gate channels as the paper describes, not with the official's layout
quirks (:class:`~.network.LAdapter`), as no official weights exist to match. The convolutional stage 0
stays as it is. The neck gives [B, 256, S/4, S/4], so the mask decoder's logits come out at the full
input S (the ViTs: S/4).

Keys: LiteMedSAM's ``image_encoder.*`` unchanged (its packaged weights load strictly), plus
``image_encoder.l_adapter_{s}.*`` and ``image_encoder.layers.{s}.blocks.{i}.channel_adapter.*``.
"""
from __future__ import annotations

from typing import Any, Tuple

from torch import Tensor, nn

from ..tinyvit import TinyViTFeatureEncoder
from .network import BLOCK_ADAPTER_SCALE, BlockAdapter, LAdapter


def _keep_normed(norm: nn.Module, inputs: Tuple[Tensor], output: Tensor) -> None:
    """Forward hook on the MLP's LayerNorm: hands its output (the MLP's normalised input) to the adapter."""
    norm.channel_adapter.normed = output


def _mlp_with_adapter(mlp: nn.Module, inputs: Tuple[Tensor], output: Tensor) -> Tensor:
    """Forward hook on a TinyViT block's MLP: its output plus 0.5 x the block adapter on the MLP's
    normalised input (the ViT's ``mlp(n2) + 0.5 adapter(n2, E)``), kept by ``_keep_normed`` rather than
    computed twice. The block sets ``embedding`` on the adapter for the duration of its call. tokens [B, L, C]."""
    adapter = mlp.channel_adapter
    b, length, c = output.shape
    h, w = adapter.resolution
    xn, adapter.normed = adapter.normed.view(b, h, w, c), None
    return output + BLOCK_ADAPTER_SCALE * adapter(xn, adapter.embedding).reshape(b, length, c)


class DAPSAMTinyViT(TinyViTFeatureEncoder):
    """images [B, 3, S, S] in 0..1 (LiteMedSAM's input) -> neck [B, 256, S/4, S/4]."""

    def __init__(self, img_size: int = 256, **kwargs: Any) -> None:
        super().__init__(img_size, feature_stages=(), **kwargs)
        self.adapted_stages = tuple(s for s, layer in enumerate(self.layers) if hasattr(layer, "blocks")
                                    and hasattr(layer.blocks[0], "attn"))
        for s in self.adapted_stages:
            layer = self.layers[s]
            self.add_module(f"l_adapter_{s}", LAdapter(layer.dim, len(layer.blocks), official_layout=False))
            for blk in layer.blocks:
                adapter = BlockAdapter(layer.dim)
                adapter.resolution = tuple(layer.input_resolution)
                blk.add_module("channel_adapter", adapter)
                # the MLP reaches its block's adapter through a plain attribute (no second registration)
                object.__setattr__(blk.mlp, "channel_adapter", adapter)
                object.__setattr__(blk.mlp.norm, "channel_adapter", adapter)
                blk.mlp.norm.register_forward_hook(_keep_normed)
                blk.mlp.register_forward_hook(_mlp_with_adapter)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._check_input(x)
        x = self.patch_embed(x)
        for s, layer in enumerate(self.layers):
            x = self._adapted_stage(s, layer, x) if s in self.adapted_stages else layer(x)
        return self.neck(self._tokens_to_map(x, len(self.layers) - 1))

    def _adapted_stage(self, s: int, layer: nn.Module, x: Tensor) -> Tensor:
        """One attention stage with its adapters; x: tokens [B, h * w, C] -> the stage's output tokens."""
        b, length, c = x.shape
        h, w = layer.input_resolution
        l_adapter = getattr(self, f"l_adapter_{s}")
        embedding = l_adapter.init_embeddings(x.view(b, h, w, c))  # E [B, C, h, w], shared by the stage's blocks
        for i, blk in enumerate(layer.blocks):
            x = x + l_adapter(i, x.view(b, h, w, c), embedding).reshape(b, length, c)
            blk.channel_adapter.embedding = embedding
            try:
                x = blk(x)
            finally:
                blk.channel_adapter.embedding = None
        return layer.downsample(x) if layer.downsample is not None else x
