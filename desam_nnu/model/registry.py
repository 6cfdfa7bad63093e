"""The network families: one entry per SAM adaptation, and the two calls that serve them all.

A family provides (and adding one touches only its own folder plus one line in ``NETWORKS``):

* ``build(backbone, image_size, num_classes, checkpoint=None, pretrained=None, **size_overrides)``:
  the network, strict about its checkpoints;
* ``load_official(source, net)``: a state dict in the layout of the family's official repository,
  strictly (no key may be missing, left over or mis-shaped); ``load_pretrained(source, net)``: a SAM
  checkpoint as the family's official code initialises from one;
* ``network_class``, by which :func:`load_official` recognises a built network;
* ``backbones`` it runs on;
* its own planner decisions: the mask-logit stride (input pixels per logit; None: the backbone's
  layout decides, as DeSAM's PDMM), the input normalisation, whether its encoder's features may be
  cached (a frozen encoder) and its prompt defaults (None: prompt-free);
* ``network_class_name``, which the plans' ``architecture`` block records.

Training and prediction both build through :func:`build_network`, from the plans' ``architecture``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from .backbones import BACKBONES, build_desam
from .checkpoints import load_official_desam, load_sam_checkpoint
from .dapsam import DAPSAM, build_dapsam, load_official_dapsam, load_sam_into_dapsam
from .dapsam import build as dapsam_build
from .dbsam import DBSAM, build_dbsam, load_official_dbsam, load_sam_into_dbsam
from .dbsam import build as dbsam_build
from .desam import DeSAM
from .masksam import MaskSAM, load_official_masksam, load_sam_into_masksam
from .masksam import build as masksam_build

StateDictSource = Union[str, os.PathLike, Mapping[str, Tensor]]


@dataclass(frozen=True)
class NetworkFamily:
    name: str
    build: Callable[..., nn.Module]
    load_official: Callable[[StateDictSource, nn.Module], nn.Module]
    load_pretrained: Callable[[StateDictSource, nn.Module], nn.Module]  # a SAM checkpoint into a built network
    network_class: type
    backbones: Tuple[str, ...]
    official_repository: str = ""
    # per backbone: input pixels per mask-logit pixel (None: the backbone's layout decides, DeSAM's PDMM)
    logit_stride: Optional[Callable[[str], int]] = None
    input_normalisation: Callable[[str], str] = lambda backbone: "network"  # see desam_nnu.rgb.network_input
    cacheable_features: bool = True  # False: trained adapters inside the encoder, features change every step
    prompts: Optional[Mapping[str, Any]] = None
    # what it predicts without user prompts: "prompts" (DeSAM: its configured grid or whole box, ``prompts``),
    # "prompt_free" (every class from the image alone) or "whole_image_box" (DB-SAM: a box over each tile per
    # class); and what a prompts file (``desam_predict --prompts``) may give it
    automatic_mode: str = "prompt_free"
    user_prompts: Tuple[str, ...] = ()
    # slices per 3D patch (a family over 3D patches, MaskSAM: the planner writes the ``masksam_3d`` configuration,
    # patch T x p x p, predicted with nnU-Net's 3D sliding window); None: a 2D family (``desam_2d``)
    slices_per_patch: Optional[int] = None
    # what the predicted tiles hold: "per_class" (0.5 then a sigmoid per class, the 2D families) or "mixture"
    # (MaskSAM's semantic mixture, one channel per label, background included)
    prediction_outputs: str = "per_class"

    @property
    def network_class_name(self) -> str:
        return f"desam_nnu.model.{self.network_class.__name__}"


DESAM_PROMPTS: Mapping[str, Any] = {
    # each slice one random point (the paper) or the whole box, half each: both prediction modes are
    # trained, so desam_find_best_configuration chooses among both. Hippocampus, medsam_lite, 20 CPU-min
    # (BENCHMARKS.md): chosen mean Dice 0.704 (box) against 0.694 for points (grid only), and mixed's
    # grid candidates scored no worse (0.656 against 0.642, top-3, before postprocessing).
    "train_mode": "mixed",
    "predict_mode": "grid",
    "grid_points_per_side": 9,
    "iou_threshold": 0.5,
    "top_k": 1,
    "box_mode_available": True,
    # what desam_find_best_configuration sweeps over the stored validation candidates; -1 keeps the best
    # prompt whatever its predicted IoU (a briefly trained IoU head predicts values near 0)
    "iou_threshold_candidates": [-1.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "top_k_candidates": [1, 2, 3],
    # which prediction modes each training prompt mode trains: the modes a model may be predicted with
    "served_modes": {"points": ["grid"], "box": ["box"], "mixed": ["grid", "box"]},
}


NETWORKS: Dict[str, NetworkFamily] = {
    "desam": NetworkFamily("desam", build_desam, load_official_desam, load_sam_checkpoint, DeSAM, tuple(BACKBONES),
                           official_repository="yifangao112/DeSAM", prompts=DESAM_PROMPTS,
                           automatic_mode="prompts", user_prompts=("boxes", "points")),
    # the official feeds each slice z-scored per image and channel and builds SAM with mean 0, std 1;
    # its decoder predicts at 1/4 of the input (medsam_lite, ours: 0..1 input, logits at the input)
    "dapsam": NetworkFamily("dapsam", build_dapsam, load_official_dapsam, load_sam_into_dapsam, DAPSAM,
                            dapsam_build.BACKBONES_RUN, official_repository="wkklavis/DAPSAM",
                            logit_stride=dapsam_build.logit_stride, input_normalisation=dapsam_build.input_normalisation,
                            cacheable_features=False),
    # the official is box-prompted (SAM's normalisation on the ViTs; LiteMedSAM's 0..1 on medsam_lite, inside the
    # network either way); without user boxes, a box over the whole tile per class (class embeddings, ours)
    "dbsam": NetworkFamily("dbsam", build_dbsam, load_official_dbsam, load_sam_into_dbsam, DBSAM,
                           dbsam_build.BACKBONES_RUN, official_repository="AlfredQin/DB-SAM",
                           logit_stride=dbsam_build.logit_stride, cacheable_features=False,
                           automatic_mode="whole_image_box", user_prompts=("boxes",)),
    # prompt-free over 3D patches of 4 slices (the official ACDC depth); its learned stem takes the plans' channels
    # at 0..1, no RGB mapping; the ACDC layout: SAM's input 4x the patch, masks back at the patch
    "masksam": NetworkFamily("masksam", masksam_build.build, load_official_masksam, load_sam_into_masksam, MaskSAM,
                             masksam_build.BACKBONES_RUN, official_repository="bxie9/MaskSAM",
                             logit_stride=masksam_build.input_pixels_per_voxel,
                             input_normalisation=lambda backbone: "unit_range",
                             cacheable_features=False, slices_per_patch=4, prediction_outputs="mixture"),
}


def network_family(name: str) -> NetworkFamily:
    if name not in NETWORKS:
        raise ValueError(f"unknown network family {name!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name]


def build_network(family: str, backbone: str, image_size: Optional[int] = None, num_classes: int = 1,
                  pretrained: Optional[bool] = None, checkpoint: Optional[StateDictSource] = None,
                  **size_overrides: Any) -> nn.Module:
    """The network of ``family`` on ``backbone``; the same call for every family (see the module doc).
    pretrained None: the backbone's packaged weights when it has some and no checkpoint is given."""
    spec = network_family(family)
    if backbone not in spec.backbones:
        raise ValueError(f"{family} runs on {list(spec.backbones)}, not {backbone!r}")
    return spec.build(backbone, image_size, num_classes, checkpoint, pretrained=pretrained, **size_overrides)


def family_of(net: nn.Module) -> NetworkFamily:
    """The family whose network ``net`` is."""
    for spec in NETWORKS.values():
        if isinstance(net, spec.network_class):
            return spec
    raise TypeError(f"{type(net).__name__} is not a network of any family ({sorted(NETWORKS)})")


def load_official(net: nn.Module, state_dict: StateDictSource) -> nn.Module:
    """Load a state dict in the layout of ``net``'s official repository (a mapping or a path), strictly."""
    return family_of(net).load_official(state_dict, net)
