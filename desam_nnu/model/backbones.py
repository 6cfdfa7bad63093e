"""Backbone registry and DeSAM builders (in the style of segment_anything/build_sam.py).

Each :class:`BackboneSpec` says everything DeSAM needs to know about an encoder: how to build it,
which of its outputs feed PDMM and how wide they are (:class:`FeatureLayout`), its pixel
normalisation, its native input size and its default sizes (which are also the names
``build_desam(**overrides)`` accepts). Adding a backbone is one spec plus one short builder, e.g.
for MedSAM-Lite's TinyViT (256 px native, 0..1 pixels, features 128@1/2, 160@1/4, 320@1/4 x2,
neck 256@1/4)::

    BACKBONES["medsam_lite"] = BackboneSpec(
        "medsam_lite", build_encoder=_tinyvit_encoder,
        feature_layout=lambda cfg: FeatureLayout(4, (3, 1, 0), (320, 160, 128), (0, 1, 1)),
        defaults=dict(_SAM_DECODER), pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0),
        native_image_size=256)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from segment_anything.modeling.image_encoder import ImageEncoderViT
from segment_anything.modeling.prompt_encoder import PromptEncoder
import torch
from torch import Tensor, nn

from .desam import DeSAM
from .pdmm import PDMM
from .prim import PRIM

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FeatureLayout",
    "ViTFeatureEncoder",
    "build_desam",
    "build_desam_tiny",
    "build_desam_vit_b",
    "build_desam_vit_h",
    "build_desam_vit_l",
    "desam_model_registry",
    "encoder_output_shapes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureLayout:
    """How DeSAM reads an encoder's output list.

    embedding_stride: input pixels per pixel of the last output (the neck, which PRIM reads).
    pdmm_feature_indices: outputs that feed PDMM, deepest first.
    pdmm_feature_channels: their channel widths.
    pdmm_context_upsamples: x2 upsamplings per PDMM context branch (level d+1 must end at twice
        the resolution of level d, level 0 at the neck's).
    """

    embedding_stride: int
    pdmm_feature_indices: Tuple[int, ...]
    pdmm_feature_channels: Tuple[int, ...]
    pdmm_context_upsamples: Tuple[int, ...]


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry. ``build_encoder(cfg, image_size)`` and ``feature_layout(cfg)`` get the
    resolved size config (``defaults`` updated with the user's overrides)."""

    name: str
    build_encoder: Callable[[Mapping[str, Any], int], nn.Module]
    feature_layout: Callable[[Mapping[str, Any]], FeatureLayout]
    defaults: Mapping[str, Any]
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    native_image_size: int
    sam_checkpoint: Optional[str] = None  # the official SAM file for this backbone, for messages


class ViTFeatureEncoder(ImageEncoderViT):
    """SAM's ViT that also returns intermediate features, as the official DeSAM encoder does.

    Only ``forward`` differs from segment_anything's ImageEncoderViT, so the state-dict keys are
    SAM's ``image_encoder.*``. Returns the outputs of every global-attention block except the last
    (DeSAM's PDMM inputs), then the neck output.
    """

    def __init__(self, *, global_attn_indexes: Tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(global_attn_indexes=tuple(global_attn_indexes), **kwargs)
        self.feature_block_indexes = tuple(sorted(global_attn_indexes))[:-1]

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        """x: [B, 3, S, S] normalised. Returns len(global_attn_indexes) - 1 tensors
        [B, embed_dim, S/p, S/p] (shallow to deep) followed by the neck [B, out_chans, S/p, S/p]."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.feature_block_indexes:
                outputs.append(x.permute(0, 3, 1, 2))
        outputs.append(self.neck(x.permute(0, 3, 1, 2)))
        return outputs


def _vit_encoder(cfg: Mapping[str, Any], image_size: int) -> ViTFeatureEncoder:
    return ViTFeatureEncoder(
        img_size=image_size,
        patch_size=cfg["patch_size"],
        embed_dim=cfg["encoder_embed_dim"],
        depth=cfg["encoder_depth"],
        num_heads=cfg["encoder_num_heads"],
        mlp_ratio=4.0,
        out_chans=cfg["prompt_embed_dim"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=cfg["window_size"],
        global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
    )


def _vit_layout(cfg: Mapping[str, Any]) -> FeatureLayout:
    levels = len(cfg["encoder_global_attn_indexes"]) - 1  # one PDMM level per returned block output
    if levels < 2:
        raise ValueError("DeSAM's ViT needs >= 3 global-attention blocks (PDMM uses all but the last)")
    return FeatureLayout(
        embedding_stride=cfg["patch_size"],
        pdmm_feature_indices=tuple(range(levels - 1, -1, -1)),
        pdmm_feature_channels=(cfg["encoder_embed_dim"],) * levels,
        pdmm_context_upsamples=tuple(range(levels)),
    )


_SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
_SAM_PIXEL_STD = (58.395, 57.12, 57.375)

# SAM's mask decoder sizes, and the official DeSAM's PDMM width.
_SAM_DECODER: Dict[str, Any] = dict(
    prompt_embed_dim=256,
    decoder_depth=2,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
    pdmm_dim=256,
)


def _vit_spec(name: str, embed_dim: int, depth: int, heads: int, global_idx: Tuple[int, ...], ckpt: Optional[str], **extra: Any) -> BackboneSpec:
    defaults = dict(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_idx,
        window_size=14,
        patch_size=16,
        **_SAM_DECODER,
    )
    defaults.update(extra)
    return BackboneSpec(name, _vit_encoder, _vit_layout, defaults, _SAM_PIXEL_MEAN, _SAM_PIXEL_STD, 1024, ckpt)


BACKBONES: Dict[str, BackboneSpec] = {
    "vit_b": _vit_spec("vit_b", 768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth"),
    "vit_l": _vit_spec("vit_l", 1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth"),
    "vit_h": _vit_spec("vit_h", 1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth"),
    # Small, for tests and CPU demos: windowed + global blocks like SAM, narrow everywhere.
    "tiny": _vit_spec(
        "tiny", 64, 8, 4, (1, 3, 5, 7), None,
        window_size=8, prompt_embed_dim=64, decoder_mlp_dim=256, decoder_num_heads=4,
        iou_head_hidden_dim=64, pdmm_dim=64,
    ),
}


def _build_desam(
    backbone: str,
    image_size: Optional[int] = None,
    num_classes: int = 1,
    checkpoint: Union[str, os.PathLike, Mapping[str, Tensor], None] = None,
    *,
    with_image_encoder: bool = True,
    **overrides: Any,
) -> DeSAM:
    """Build DeSAM from a registry entry plus size overrides; optionally load a checkpoint."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise TypeError(f"unknown size override(s) {unknown} for {backbone}; allowed: {sorted(spec.defaults)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    cfg = {**spec.defaults, **overrides}
    size = int(image_size or spec.native_image_size)
    layout = spec.feature_layout(cfg)
    if size % layout.embedding_stride:
        raise ValueError(f"image_size {size} is not a multiple of the encoder stride {layout.embedding_stride}")
    emb = size // layout.embedding_stride
    prompt_dim = cfg["prompt_embed_dim"]
    model = DeSAM(
        image_encoder=spec.build_encoder(cfg, size) if with_image_encoder else None,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(emb, emb), input_image_size=(size, size), mask_in_chans=16
        ),
        prim=PRIM(
            transformer_dim=prompt_dim,
            depth=cfg["decoder_depth"],
            num_heads=cfg["decoder_num_heads"],
            mlp_dim=cfg["decoder_mlp_dim"],
            iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
            num_classes=num_classes,
        ),
        pdmm=PDMM(
            feature_channels=layout.pdmm_feature_channels,
            context_upsamples=layout.pdmm_context_upsamples,
            mask_embedding_dim=prompt_dim,
            pdmm_dim=cfg["pdmm_dim"],
            num_classes=num_classes,
        ),
        pdmm_feature_indices=layout.pdmm_feature_indices,
        image_size=size,
        pixel_mean=spec.pixel_mean,
        pixel_std=spec.pixel_std,
        backbone=backbone,
        config=cfg,
    )
    logger.info(
        "built DeSAM(%s, image_size=%d, num_classes=%d): %.2fM parameters, %.2fM trainable",
        backbone, size, num_classes, sum(p.numel() for p in model.parameters()) / 1e6,
        model.trainable_parameter_count() / 1e6,
    )
    if checkpoint is not None:
        from .checkpoints import load_checkpoint

        load_checkpoint(checkpoint, model)
    return model


def encoder_output_shapes(backbone: str, image_size: Optional[int] = None,
                          **overrides: Any) -> List[Tuple[int, int, int]]:
    """(C, H, W) of every encoder output at ``image_size``: what a feature cache stores per slice.

    Runs the encoder on the meta device, so nothing is allocated and no weights are needed; the
    planner uses it to estimate cache sizes for any backbone without knowing its internals.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    size = int(image_size or spec.native_image_size)
    with torch.device("meta"):
        outputs = spec.build_encoder({**spec.defaults, **overrides}, size)(torch.empty(1, 3, size, size))
    return [tuple(int(i) for i in o.shape[1:]) for o in outputs]


def build_desam_vit_h(image_size: Optional[int] = None, num_classes: int = 1, checkpoint: Any = None, **kw: Any) -> DeSAM:
    """DeSAM on SAM ViT-H (PDMM input width 1280); checkpoint e.g. sam_vit_h_4b8939.pth."""
    return _build_desam("vit_h", image_size, num_classes, checkpoint, **kw)


def build_desam_vit_l(image_size: Optional[int] = None, num_classes: int = 1, checkpoint: Any = None, **kw: Any) -> DeSAM:
    """DeSAM on SAM ViT-L (PDMM input width 1024); checkpoint e.g. sam_vit_l_0b3195.pth."""
    return _build_desam("vit_l", image_size, num_classes, checkpoint, **kw)


def build_desam_vit_b(image_size: Optional[int] = None, num_classes: int = 1, checkpoint: Any = None, **kw: Any) -> DeSAM:
    """DeSAM on SAM ViT-B (PDMM input width 768); checkpoint e.g. sam_vit_b_01ec64.pth."""
    return _build_desam("vit_b", image_size, num_classes, checkpoint, **kw)


def build_desam_tiny(image_size: Optional[int] = None, num_classes: int = 1, checkpoint: Any = None, **kw: Any) -> DeSAM:
    """A small DeSAM (64-wide ViT, 8 blocks) for tests and CPU demos; no pretrained weights."""
    return _build_desam("tiny", image_size, num_classes, checkpoint, **kw)


desam_model_registry: Dict[str, Callable[..., DeSAM]] = {
    "vit_b": build_desam_vit_b,
    "vit_l": build_desam_vit_l,
    "vit_h": build_desam_vit_h,
    "tiny": build_desam_tiny,
}


def build_desam(
    backbone: str,
    image_size: Optional[int] = None,
    num_classes: int = 1,
    checkpoint: Union[str, os.PathLike, Mapping[str, Tensor], None] = None,
    **overrides: Any,
) -> DeSAM:
    """Build DeSAM.

    backbone: "vit_b", "vit_l", "vit_h" or "tiny".
    image_size: square input size; None means the backbone's native size (1024 for SAM's ViTs).
        Position embeddings of a checkpoint are interpolated when it differs.
    num_classes: foreground classes; 1 is the official binary model.
    checkpoint: a SAM checkpoint (sam_vit_*.pth layout: image_encoder/prompt_encoder/mask_decoder;
        initialises the encoders and PRIM, PDMM stays new), an official DeSAM checkpoint
        (detected by its mask_decoder.pimm.* keys), or this package's own state dict; a path or a
        state dict. Keys and shapes are checked strictly (CheckpointError).
    overrides: sizes, e.g. encoder_embed_dim, encoder_depth, encoder_num_heads,
        encoder_global_attn_indexes, window_size, patch_size, prompt_embed_dim, decoder_depth,
        decoder_mlp_dim, decoder_num_heads, iou_head_depth, iou_head_hidden_dim, pdmm_dim;
        plus with_image_encoder=False for a decoder-only model fed with precomputed features.
    To build without allocating (shapes only): ``with torch.device("meta"): build_desam("vit_h")``.
    """
    if backbone not in desam_model_registry:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(desam_model_registry)}")
    return desam_model_registry[backbone](image_size, num_classes, checkpoint, **overrides)
