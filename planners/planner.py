"""DeSAMPlanner: nnU-Net's experiment planner, reduced to one configuration for a SAM network family: ``desam_2d``,
or ``masksam_3d`` for a family over 3D patches (MaskSAM: nnU-Net's 3d_fullres spacing, a patch of T slices x p x p
with T the family's slices, p as below but rounded to 16 and SAM's input k p with k the family's input pixels per
voxel, 4 on the ViTs and 2 on medsam_lite; batch 2 as the official plans).

The family (``--family``: DeSAM by default, DAPSAM, DB-SAM or MaskSAM) brings its own decisions from the registry
(``desam_nnu.model.registry``): its mask-logit stride (DAPSAM's and DB-SAM's decoders: 1/4 of the input on the
ViTs, the input on medsam_lite; DeSAM: the backbone's PDMM layout, below), its input normalisation, whether its
features may be cached, its prompt defaults (DeSAM's only), its automatic mode and the prompts a file may give
it. The plans record them with the family's name, and the
``architecture`` block names its network class; everything else below is shared.

It reuses nnU-Net's fingerprint, transpose rule (slices are cut across the lowest-resolution axis,
``transpose_forward[0]``; for near-isotropic data nnU-Net's own tie-break applies), 2D target
spacing and resampling functions, and adds the decisions SAM needs:

Patch (in-plane, voxels at the planned spacing). Square, so that resizing to SAM's square input
keeps the aspect ratio: the longest edge of the median slice, rounded up to a multiple of 8, capped
at half the backbone's native input (512 for the ViTs). Slices larger than the patch are tiled by
nnU-Net's sliding window; smaller ones are padded (with 0, SAM's black).

SAM input size (``image_size``). The rule is ``clip(ceil64(k * patch), minimum, native)``, with
``k`` (input pixels per voxel) and ``minimum`` from the backbone table. For the SAM ViTs, ``k`` is 4:
PDMM predicts mask logits at 1/4 of the input, so the logits come out at the patch's voxel
resolution; the minimum is 256 (a 16x16 ViT token grid); the maximum is SAM's native 1024.
medsam_lite predicts logits at its full input, and there ``k`` is 2 with a minimum of 128: on
hippocampus (56-voxel patches) 128 px scored at least as well as the native 256 at a seventh of
the time (BENCHMARKS.md, LiteMedSAM box reference). ``--image-size`` overrides the rule (a
multiple of the encoder stride, 64..native). A patch is resized by ``image_size / patch`` on the way in; the logits
(``mask_logits_size``) are resized to the patch on the way out.
"""
import math
from typing import List, Optional, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from desam_nnu.cache import feature_bytes_per_item
from desam_nnu.config import CONFIGURATION, CONFIGURATION_3D, PLANS_NAME
from desam_nnu.errors import DeSAMInputError
from desam_nnu.model.backbones import BACKBONES, BackboneSpec, encoder_output_shapes
from desam_nnu.model.registry import NetworkFamily, network_family
from desam_nnu.planners.normalization import scheme_for_channel
from desam_nnu.rgb import MAX_CHANNELS, channel_to_rgb_matrix

PATCH_MULTIPLE = 8
INPUT_MULTIPLE = 64
MIN_IMAGE_SIZE = 256
OFFICIAL_BATCH_SIZE = 8  # desam_train_gridpoints.py default (the official DAPSAM's batch too)
MIN_BATCH_SIZE = 2


def choose_patch_edge(median_slice_shape: Tuple[float, float], native_image_size: int) -> int:
    """Square patch edge covering the median slice, capped at half the native input."""
    edge = int(math.ceil(max(median_slice_shape) / PATCH_MULTIPLE) * PATCH_MULTIPLE)
    return max(PATCH_MULTIPLE, min(edge, native_image_size // 2))


def choose_image_size(patch_edge: int, native_image_size: int, pixels_per_voxel: int = 4,
                      minimum: int = MIN_IMAGE_SIZE) -> int:
    """SAM input edge: ``pixels_per_voxel`` x patch, rounded up to 64, within [minimum, native].

    For the SAM ViTs ``pixels_per_voxel`` is their mask-logit stride, 4 (PDMM ends at 1/4), so the
    logits come out at the patch's voxel resolution.
    """
    wanted = int(math.ceil(pixels_per_voxel * patch_edge / INPUT_MULTIPLE) * INPUT_MULTIPLE)
    return max(min(minimum, native_image_size), min(wanted, native_image_size))


MASKSAM_PATCH_MULTIPLE = 16  # the ACDC layout: the patch is 4x the 16-pixel token grid
MASKSAM_BATCH_SIZE = 2  # the official plans' "b2"


def choose_3d_patch(median_shape: Tuple[float, float, float], slices: int, native_image_size: int,
                    pixels_per_voxel: int = 4, minimum: int = MIN_IMAGE_SIZE) -> Tuple[List[int], int]:
    """(patch [T, p, p], SAM input k p) of a family over 3D patches: T the family's slices (the median depth when
    thinner), p the longest in-plane edge rounded up to 16, between minimum / k and native / k. The official ACDC
    layout has k = 4 (p from 64, a 256 px input of 16 x 16 tokens, to 256, SAM's 1024); MaskSAM on TinyViT k = 2."""
    depth = max(1, min(slices, int(round(median_shape[0]))))
    edge = int(math.ceil(max(median_shape[1:]) / MASKSAM_PATCH_MULTIPLE) * MASKSAM_PATCH_MULTIPLE)
    edge = max(minimum // pixels_per_voxel, min(edge, native_image_size // pixels_per_voxel))
    return [depth, edge, edge], pixels_per_voxel * edge


def validate_image_size(image_size: int, native_image_size: int, patch_stride: int) -> None:
    if image_size % patch_stride or not 64 <= image_size <= native_image_size:
        raise DeSAMInputError(f"--image-size {image_size}: must be a multiple of {patch_stride} "
                              f"between 64 and the backbone's native {native_image_size}")


def channel_names(dataset_json: dict, path: str) -> List[str]:
    """The input channels in order; more than SAM's three RGB channels is an error."""
    channels = dataset_json["channel_names"] if "channel_names" in dataset_json else dataset_json["modality"]
    if len(channels) > MAX_CHANNELS:
        raise DeSAMInputError(f"{path}: {len(channels)} channels; DeSAM maps at most {MAX_CHANNELS} onto SAM's "
                              f"RGB input")
    return [channels[k] for k in sorted(channels, key=int)]


def family_spec(family: str, backbone: str) -> NetworkFamily:
    """The registry's entry for ``family``, which must run on ``backbone``."""
    try:
        spec = network_family(family)
    except ValueError as e:
        raise DeSAMInputError(str(e)) from None
    if backbone not in spec.backbones:
        raise DeSAMInputError(f"--family {family} runs on {', '.join(spec.backbones)}, not {backbone}: pass --backbone")
    return spec


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise DeSAMInputError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


class DeSAMPlanner(ExperimentPlanner):
    """Writes ``DeSAMPlans.json`` with its family's single configuration, ``desam_2d`` or ``masksam_3d``."""

    def __init__(self, dataset_name_or_id: Union[str, int], backbone: str = "medsam_lite",
                 image_size: Optional[int] = None, plans_name: str = PLANS_NAME,
                 preprocessor_name: str = "DeSAMPreprocessor", cache_dtype: str = "float16",
                 family: str = "desam") -> None:
        super().__init__(dataset_name_or_id, preprocessor_name=preprocessor_name, plans_name=plans_name)
        self.family: NetworkFamily = family_spec(family, backbone)
        self.backbone: BackboneSpec = backbone_spec(backbone)
        if image_size is not None:
            stride = self.backbone.feature_layout(self.backbone.defaults).embedding_stride
            validate_image_size(image_size, self.backbone.native_image_size, stride)
            step = self.family.logit_stride(backbone) * MASKSAM_PATCH_MULTIPLE if self.family.logit_stride else 1
            if self.family.slices_per_patch and image_size % step:
                raise DeSAMInputError(f"--image-size {image_size}: {family} on {backbone} takes a multiple of {step}")
        self.image_size_override = image_size
        self.cache_dtype = cache_dtype
        self.channel_names = channel_names(self.dataset_json, f"{self.raw_dataset_folder}/dataset.json")

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        """SAM's 0..255 mappings instead of z-scoring; they need no nonzero mask."""
        return [scheme_for_channel(c).__name__ for c in self.channel_names], [False] * len(self.channel_names)

    def _cache_estimate(self, image_size: int, patch_edge: int, transpose_forward: List[int]) -> dict:
        """Bytes per cached slice (all encoder outputs) times the training slices (x tiles if larger than the patch)."""
        shapes = encoder_output_shapes(self.backbone.name, image_size)
        bytes_per_slice = feature_bytes_per_item(shapes, self.cache_dtype)
        num_slices = 0
        for shape in self.dataset_fingerprint["shapes_after_crop"]:
            s = [shape[i] for i in transpose_forward]
            num_slices += int(s[0]) * math.ceil(s[1] / patch_edge) * math.ceil(s[2] / patch_edge)
        return {"default": self.backbone.features, "dtype": self.cache_dtype,
                "feature_shapes": [list(s) for s in shapes], "bytes_per_slice": bytes_per_slice, "num_slices": num_slices,
                "total_bytes": bytes_per_slice * num_slices}

    def plan_experiment(self) -> dict:
        """Plan ``desam_2d`` only.

        Overridden whole because nnU-Net's version always plans 3D U-Net configurations too (each
        needing network instantiation for its VRAM estimate); the steps are nnU-Net's own methods.
        """
        transpose_forward, transpose_backward = self.determine_transpose()
        fullres_spacing = self.determine_fullres_target_spacing()
        spacing_2d = [float(i) for i in fullres_spacing[transpose_forward][1:]]
        new_shapes = [compute_new_shape(shape, spacing, fullres_spacing) for spacing, shape in
                      zip(self.dataset_fingerprint["spacings"], self.dataset_fingerprint["shapes_after_crop"])]
        median_shape = np.median(new_shapes, 0)[transpose_forward]

        native = self.backbone.native_image_size
        family = self.family
        if family.logit_stride is None:  # DeSAM: the backbone's layout sets where PDMM's logits end
            overrides = dict(self.backbone.planned_overrides)
            layout = self.backbone.feature_layout({**self.backbone.defaults, **overrides})
            per_voxel = self.backbone.input_pixels_per_voxel or native // layout.mask_size(native)
        else:  # the family's decoder predicts at a fixed stride: the logits at the patch's voxels
            overrides, layout, per_voxel = {}, None, family.logit_stride(self.backbone.name)
        minimum = self.backbone.min_image_size
        patch_edge = choose_patch_edge(tuple(median_shape[1:]), native)
        image_size = self.image_size_override or choose_image_size(patch_edge, native, per_voxel, minimum)
        rule = f"clip(ceil64({per_voxel} * patch {patch_edge}), {minimum}, native {native})"
        n_voxels_dataset = float(np.prod(median_shape, dtype=np.float64) * self.dataset_json["numTraining"])
        bs_5_percent = round(n_voxels_dataset * self.max_dataset_covered / patch_edge ** 2)
        batch_size = max(min(OFFICIAL_BATCH_SIZE, bs_5_percent), MIN_BATCH_SIZE)
        name, patch, spacing = CONFIGURATION, [patch_edge, patch_edge], spacing_2d
        if family.slices_per_patch:  # a family over 3D patches: nnU-Net's 3d_fullres spacing, T x p x p
            name, spacing, batch_size = CONFIGURATION_3D, [float(i) for i in fullres_spacing[transpose_forward]], \
                MASKSAM_BATCH_SIZE
            patch, image_size = choose_3d_patch(tuple(median_shape), family.slices_per_patch, native, per_voxel,
                                                minimum)
            if self.image_size_override:
                patch[1:], image_size = [self.image_size_override // per_voxel] * 2, self.image_size_override
            patch_edge = patch[-1]
            overrides = {"num_frames": patch[0], "input_channels": len(self.channel_names)}
            rule = "override" if self.image_size_override else \
                f"{per_voxel} x patch {patch_edge} (ceil16 of the median slice, {minimum} .. {native} / {per_voxel})"
        logits_edge = layout.mask_size(image_size) if layout is not None else image_size // per_voxel

        schemes, use_mask = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        res_data, res_data_kw, res_seg, res_seg_kw = self.determine_resampling()
        res_prob, res_prob_kw = self.determine_segmentation_softmax_export_fn()
        num_classes = len(self.dataset_json["labels"]) - 1
        cache = self._cache_estimate(image_size, patch_edge, list(transpose_forward))
        if not family.cacheable_features:
            cache["default"] = "online"
        normalisation = family.input_normalisation(self.backbone.name)
        network_mean_std = normalisation == "network"
        configuration = {
            "data_identifier": self.generate_data_identifier(name),
            "preprocessor_name": self.preprocessor_name,
            "batch_size": int(batch_size),
            "patch_size": patch,
            "median_image_size_in_voxels": [float(i) for i in median_shape[-len(patch):]],
            "spacing": spacing,
            "normalization_schemes": schemes,
            "use_mask_for_norm": use_mask,
            "resampling_fn_data": res_data.__name__,
            "resampling_fn_seg": res_seg.__name__,
            "resampling_fn_data_kwargs": res_data_kw,
            "resampling_fn_seg_kwargs": res_seg_kw,
            "resampling_fn_probabilities": res_prob.__name__,
            "resampling_fn_probabilities_kwargs": res_prob_kw,
            "architecture": {
                "network_class_name": family.network_class_name,
                "arch_kwargs": {"family": family.name, "backbone": self.backbone.name, "image_size": image_size,
                                "num_classes": num_classes, **overrides},
                "_kw_requires_import": [],
            },
            "batch_dice": True,
            "desam": {
                "family": family.name,
                "backbone": self.backbone.name,
                "image_size": image_size,
                "image_size_rule": "override" if self.image_size_override else rule,
                "native_image_size": native,
                # build_desam size overrides the backbone table plans (medsam_lite: PDMM at half resolution)
                "network_overrides": overrides,
                "slicing": {"axis": int(transpose_forward[0]),
                            "transpose_forward": [int(i) for i in transpose_forward]},
                "resize": {"patch_to_input_scale": image_size / patch_edge,
                           "input_size": [image_size, image_size],
                           "mask_logits_size": [logits_edge, logits_edge],
                           "logits_to_patch": "bilinear resize of the logits from mask_logits_size to patch_size"},
                "intensity": {"range": [0.0, 255.0], "percentiles": [0.5, 99.5],
                              "channels": self.channel_names},
                "channel_to_rgb": channel_to_rgb_matrix(len(self.channel_names)),
                "input_normalisation": normalisation,
                "pixel_mean": list(self.backbone.pixel_mean) if network_mean_std else [0.0, 0.0, 0.0],
                "pixel_std": list(self.backbone.pixel_std) if network_mean_std else [1.0, 1.0, 1.0],
                "num_classes": num_classes,
                "prompts": dict(family.prompts) if family.prompts is not None else None,
                "automatic_mode": family.automatic_mode,
                "user_prompts": list(family.user_prompts),
                "embedding_cache": cache,
            },
        }
        median_spacing = np.median(self.dataset_fingerprint["spacings"], 0)[transpose_forward]
        median_shape_orig = np.median(self.dataset_fingerprint["shapes_after_crop"], 0)[transpose_forward]
        self.plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(i) for i in median_spacing],
            "original_median_shape_after_transp": [int(round(i)) for i in median_shape_orig],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [int(i) for i in transpose_forward],
            "transpose_backward": [int(i) for i in transpose_backward],
            "configurations": {name: configuration},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                self.dataset_fingerprint["foreground_intensity_properties_per_channel"],
        }
        return self.plans
