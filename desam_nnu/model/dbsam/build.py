"""Building DB-SAM and loading its weights: the official layout (a checkpoint of its trainer, ``{"net": ...}``)
or a SAM checkpoint as the official builder initialises from one."""
from __future__ import annotations

import logging
from typing import Dict, Mapping

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from ..checkpoints import StateDictSource, _fail, _resize_position_tables, _source_name, read_state_dict
from .network import DBSAM, DBSAMEncoder, PyramidAdapter

logger = logging.getLogger(__name__)

VIT_SIZES: Dict[str, Dict[str, object]] = {  # SAM's ViTs: width, depth, heads, global-attention blocks
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
}


def build_dbsam(backbone: str = "vit_b", image_size: int = 1024, antialias: bool = True,
                **size_overrides: object) -> DBSAM:
    """DB-SAM on SAM's ``backbone`` at ``image_size`` px (random weights); ``size_overrides`` change the
    ViT's width, depth, heads or global blocks (tests build a narrow one)."""
    if backbone not in VIT_SIZES:
        raise ValueError(f"DB-SAM backbone {backbone!r}: one of {', '.join(VIT_SIZES)}")
    vit = {**VIT_SIZES[backbone], **size_overrides}
    heads = int(vit["num_heads"])
    adapter = PyramidAdapter(int(vit["embed_dim"]), num_heads=heads, antialias=antialias)
    encoder = DBSAMEncoder(adapter, img_size=image_size, patch_size=16, mlp_ratio=4.0, out_chans=256,
                           qkv_bias=True, norm_layer=nn.LayerNorm, use_rel_pos=True, window_size=14,
                           embed_dim=vit["embed_dim"], depth=vit["depth"], num_heads=heads,
                           global_attn_indexes=tuple(vit["global_attn_indexes"]))
    grid = image_size // 16
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                                 mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return DBSAM(encoder, prompt, decoder, backbone)


def load_official_dbsam(source: StateDictSource, model: DBSAM) -> DBSAM:
    """A state dict of the official DB-SAM (its trainer's ``{"net": ...}`` or the bare mapping), strictly: every
    tensor present with its shape, nothing left over; position tables resized when the image size differs.
    The reconstructed MSMixFFN's keys (``mlp.fc1``, ``mlp.dwconv.dwconv``, ``mlp.fc2``) are a guess: no
    official checkpoint has been published to confirm them."""
    sd, name = dict(read_state_dict(source)), _source_name(source)
    _strict(model, sd, model.state_dict(), name)
    model.load_state_dict(sd, strict=True)
    return model


def load_sam_into_dbsam(source: StateDictSource, model: DBSAM) -> DBSAM:
    """SAM's weights as the official builder takes them: the ViT and neck strictly, the prompt encoder and the
    mask decoder; the adapter keeps its initialisation."""
    sd, name = dict(read_state_dict(source)), _source_name(source)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("image_encoder.adapter.")}
    _strict(model, sd, own, name)
    model.load_state_dict(sd, strict=False)
    logger.info("loaded SAM checkpoint %s into DBSAM(%s): %d tensors", name, model.backbone, len(sd))
    return model


def _strict(model: nn.Module, sd: Dict[str, Tensor], own: Mapping[str, Tensor], name: str) -> None:
    _resize_position_tables(sd, own)
    _fail(name, model, [k for k in own if k not in sd], [k for k in sd if k not in own],
          [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
           if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)])
