"""The DeSAM section of ``DeSAMPlans.json`` (configuration ``desam_2d``, or ``masksam_3d`` for a family over 3D
patches) as a typed, read-only object.

The plans are the only contract between stages: the planner writes every decision here (the network
family among them) and the trainer and predictor read them through this object, never recomputing
them; both build the network with :meth:`DeSAMConfig.build_network`.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

PLANS_NAME = "DeSAMPlans"
CONFIGURATION = "desam_2d"  # the 2D families' configuration (DeSAM, DAPSAM, DB-SAM)
CONFIGURATION_3D = "masksam_3d"  # a family over 3D patches (MaskSAM): T slices x p x p
CONFIGURATIONS = (CONFIGURATION, CONFIGURATION_3D)


def plans_configuration(plans: Dict[str, Any]) -> str:
    """The configuration a DeSAM plans dict holds (it holds one: the planner writes the family's)."""
    names = [c for c in CONFIGURATIONS if c in plans.get("configurations", {})]
    if len(names) != 1:
        raise ValueError(f"plans {plans.get('plans_name', '')!r} hold configurations "
                         f"{sorted(plans.get('configurations', {}))}, not one of {list(CONFIGURATIONS)}")
    return names[0]


@dataclass(frozen=True)
class PromptDefaults:
    """DeSAM's prompt settings: training points, and the automatic grid / whole-box modes at inference."""

    train_mode: str  # 'mixed' (default: point or whole box per slice), 'points' (the paper) or 'box'
    predict_mode: str  # 'grid' (DeSAM's automatic mode) or 'box'
    grid_points_per_side: int  # 9 -> 81 prompts per tile
    iou_threshold: float  # keep grid prompts whose predicted IoU is at least this
    top_k: int  # fuse the k best prompts (1 = official)
    box_mode_available: bool
    # desam_find_best_configuration's sweep (plans written before it existed get these)
    iou_threshold_candidates: Tuple[float, ...] = (-1.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    top_k_candidates: Tuple[int, ...] = (1, 2, 3)
    # training prompt mode -> the prediction modes it trains (points: PRIM's IoU head on grid prompts)
    served_modes: Tuple[Tuple[str, Tuple[str, ...]], ...] = (("points", ("grid",)), ("box", ("box",)),
                                                             ("mixed", ("grid", "box")))

    def serves(self, train_mode: str) -> Tuple[str, ...]:
        """The prediction modes a model trained with ``train_mode`` prompts may use."""
        return dict(self.served_modes).get(train_mode, ())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PromptDefaults":
        d = dict(d)
        for key, cast in (("iou_threshold_candidates", float), ("top_k_candidates", int)):
            if key in d:
                d[key] = tuple(cast(v) for v in d[key])
        if "served_modes" in d:
            d["served_modes"] = tuple((k, tuple(v)) for k, v in d["served_modes"].items())
        return cls(**d)


@dataclass(frozen=True)
class CacheEstimate:
    """Size of the frozen-encoder embedding cache for the training slices, and whether to use it.

    ``default`` is the backbone's (from the backbone table): ``auto`` (the cache when it pays for itself
    in the run: ``trainers/features.py``), ``cache`` or ``online``; ``desam_train --cache/--no-cache``
    overrides it.
    """

    default: str
    dtype: str
    feature_shapes: Tuple[Tuple[int, int, int], ...]  # per encoder output: (C, H, W)
    bytes_per_slice: int
    num_slices: int
    total_bytes: int


@dataclass(frozen=True)
class DeSAMConfig:
    """Everything a trainer and predictor need beyond nnU-Net's own configuration keys."""

    backbone: str
    image_size: int  # SAM input edge: a patch is resized to image_size x image_size
    native_image_size: int
    patch_size: Tuple[int, int]  # in-plane patch in voxels at the planned spacing (square)
    patch_to_input_scale: float  # image_size / patch edge
    mask_logits_size: Tuple[int, int]  # PDMM output size; resized back to patch_size for the loss / export
    slicing_axis: int  # axis of the original (untransposed) array that slices are cut across
    transpose_forward: Tuple[int, ...]
    intensity_schemes: Tuple[str, ...]  # per input channel, mapping to 0..255
    channel_to_rgb: Tuple[Tuple[float, ...], ...]  # 3 x C
    pixel_mean: Tuple[float, float, float]  # the network's pixel normalisation after the 0..255 mapping
    pixel_std: Tuple[float, float, float]
    num_classes: int  # foreground classes (mask channels / predicted IoUs)
    batch_size: int
    prompts: Optional[PromptDefaults]  # None: a prompt-free family (DAPSAM)
    cache: CacheEstimate
    # build_desam(**network_overrides): sizes the planner chose (plans written before the key: none)
    network_overrides: Tuple[Tuple[str, Any], ...] = ()
    family: str = "desam"  # the network family (desam_nnu.model.registry); plans before the key: DeSAM
    # how the 0..255 RGB input is normalised before the network: "network" (the network's own pixel
    # mean/std, DeSAM), "per_image_zscore" (each image and channel z-scored, as the official DAPSAM) or
    # "unit_range" (x / 255, LiteMedSAM's range)
    input_normalisation: str = "network"
    # the plans' ``architecture.arch_kwargs``: family, backbone, image_size, num_classes and size overrides,
    # from which trainer and predictor build the network (plans without the block: the fields above)
    architecture: Tuple[Tuple[str, Any], ...] = ()
    # without user prompts: "prompts" (DeSAM's grid or box, ``prompts``), "prompt_free" or "whole_image_box"
    # (DB-SAM); what ``desam_predict --prompts`` may give: "boxes", "points"
    automatic_mode: str = "prompts"
    user_prompts: Tuple[str, ...] = ("boxes", "points")
    # a 3D configuration's slices per patch (the patch is slices x patch_size); None: a 2D configuration
    slices_per_patch: Optional[int] = None

    @classmethod
    def from_configuration(cls, configuration: Dict[str, Any]) -> "DeSAMConfig":
        """Read from a resolved ``desam_2d`` configuration dict (``ConfigurationManager.configuration``)."""
        d = configuration["desam"]
        cache = d["embedding_cache"]
        return cls(
            backbone=d["backbone"],
            image_size=int(d["image_size"]),
            native_image_size=int(d["native_image_size"]),
            patch_size=tuple(int(i) for i in configuration["patch_size"][-2:]),
            patch_to_input_scale=float(d["resize"]["patch_to_input_scale"]),
            mask_logits_size=tuple(int(i) for i in d["resize"]["mask_logits_size"]),
            slicing_axis=int(d["slicing"]["axis"]),
            transpose_forward=tuple(int(i) for i in d["slicing"]["transpose_forward"]),
            intensity_schemes=tuple(configuration["normalization_schemes"]),
            channel_to_rgb=tuple(tuple(float(v) for v in row) for row in d["channel_to_rgb"]),
            pixel_mean=tuple(float(v) for v in d["pixel_mean"]),
            pixel_std=tuple(float(v) for v in d["pixel_std"]),
            num_classes=int(d["num_classes"]),
            batch_size=int(configuration["batch_size"]),
            prompts=PromptDefaults.from_dict(d["prompts"]) if d.get("prompts") else None,
            cache=CacheEstimate(
                default=cache.get("default", "cache"),  # plans written before the key existed
                dtype=cache["dtype"],
                feature_shapes=tuple(tuple(int(i) for i in s) for s in cache["feature_shapes"]),
                bytes_per_slice=int(cache["bytes_per_slice"]),
                num_slices=int(cache["num_slices"]),
                total_bytes=int(cache["total_bytes"]),
            ),
            network_overrides=tuple(sorted(d.get("network_overrides", {}).items())),
            family=d.get("family", "desam"),
            input_normalisation=d.get("input_normalisation", "network"),
            architecture=tuple(sorted(configuration.get("architecture", {}).get("arch_kwargs", {}).items())),
            # plans written before the keys: DeSAM's prompts, or prompt-free
            automatic_mode=d.get("automatic_mode", "prompts" if d.get("prompts") else "prompt_free"),
            user_prompts=tuple(d.get("user_prompts", ("boxes", "points") if d.get("prompts") else ())),
            slices_per_patch=int(configuration["patch_size"][0]) if len(configuration["patch_size"]) == 3 else None,
        )

    def network_kwargs(self) -> Dict[str, Any]:
        """``build_network(family, backbone, **network_kwargs())``: the network the plans describe."""
        return dict(image_size=self.image_size, num_classes=self.num_classes, **dict(self.network_overrides))

    def build_network(self, pretrained: Optional[bool] = False) -> Any:
        """The plans' network, random weights by default (trained weights come from a checkpoint): the one
        call through which training and prediction build it."""
        from desam_nnu.model import build_network  # the model stack loads only where a network is built

        kwargs = dict(self.architecture) or dict(backbone=self.backbone, **self.network_kwargs())
        family = kwargs.pop("family", "desam")
        return build_network(family, pretrained=pretrained, **kwargs)

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_to_rgb[0])
