"""DeSAMPlanner's decisions: slicing axis, patch, SAM input size, batch size, cache estimate."""
import json
import os

import pytest
import torch
from synthetic import make_dataset

from desam_nnu.config import CONFIGURATION, DeSAMConfig
from desam_nnu.errors import DeSAMInputError
from desam_nnu.planners.planner import DeSAMPlanner, choose_image_size, choose_patch_edge
from desam_nnu.model import build_desam
from desam_nnu.model.backbones import BACKBONES


@pytest.mark.parametrize("median, native, edge", [
    ((50.5, 36.0), 1024, 56),     # hippocampus: the longest edge, rounded up to a multiple of 8
    ((512, 512), 1024, 512),      # CT slice: one tile
    ((2000, 1500), 1024, 512),    # huge slice: capped at native / 2, tiled by the sliding window
    ((3, 5), 1024, 8),
    ((300, 200), 256, 128),       # a 256-px backbone caps at 128
])
def test_patch_edge_covers_the_median_slice_and_is_capped(median, native, edge):
    assert choose_patch_edge(median, native) == edge


@pytest.mark.parametrize("patch, native, size", [
    (56, 1024, 256),    # 4 x 56 = 224 -> at least 256
    (96, 1024, 384),    # 4 x 96 = 384: logits at the patch's own resolution
    (100, 1024, 448),   # 400 rounded up to a multiple of 64
    (512, 1024, 1024),  # never above the native 1024
    (40, 128, 128),     # a backbone whose native size is below 256
])
def test_image_size_rule(patch, native, size):
    assert choose_image_size(patch, native) == size


@pytest.mark.parametrize("patch, size", [(56, 128), (40, 128), (96, 192), (128, 256)])
def test_medsam_lite_image_size_rule(patch, size):
    """2 input pixels per voxel, at least 128, at most the native 256."""
    spec = BACKBONES["medsam_lite"]
    assert choose_image_size(patch, spec.native_image_size, spec.input_pixels_per_voxel, spec.min_image_size) == size


def _fingerprint(pre_dir, shapes, spacings):
    os.makedirs(pre_dir, exist_ok=True)
    fp = {"spacings": spacings, "shapes_after_crop": shapes,
          "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "median": 1.0, "std": 1.0, "min": 0.0,
                                                                "max": 2.0, "percentile_99_5": 2.0,
                                                                "percentile_00_5": 0.0}},
          "median_relative_size_after_cropping": 1.0}
    with open(os.path.join(pre_dir, "dataset_fingerprint.json"), "w") as f:
        json.dump(fp, f)


def _planner_for(nnunet_dirs, shapes, spacings, **kw):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 7, num_cases=1, shape_zyx=(4, 8, 8))
    _fingerprint(os.path.join(nnunet_dirs["nnUNet_preprocessed"], os.path.basename(folder)), shapes, spacings)
    return DeSAMPlanner(7, **kw)


def test_large_ct_like_slices_get_tiled_and_the_native_input(nnunet_dirs):
    planner = _planner_for(nnunet_dirs, [[100, 700, 700]] * 3, [[2.5, 0.7, 0.7]] * 3, backbone="vit_h")
    cfg = DeSAMConfig.from_configuration(planner.plan_experiment()["configurations"][CONFIGURATION])
    assert cfg.patch_size == (512, 512) and cfg.image_size == 1024 and cfg.mask_logits_size == (256, 256)
    # 100 slices x 2 x 2 tiles per case, 3 cases; vit_h features: 3 x 1280 + 256 channels at 64 x 64, fp16
    assert cfg.cache.num_slices == 3 * 100 * 4
    assert cfg.cache.bytes_per_slice == (3 * 1280 + 256) * 64 * 64 * 2
    assert cfg.cache.total_bytes == cfg.cache.bytes_per_slice * cfg.cache.num_slices
    assert cfg.batch_size == 8


def test_image_size_override_and_its_validation(nnunet_dirs):
    planner = _planner_for(nnunet_dirs, [[20, 64, 64]], [[1.0, 1.0, 1.0]], image_size=512, backbone="vit_b")
    cfg = DeSAMConfig.from_configuration(planner.plan_experiment()["configurations"][CONFIGURATION])
    assert cfg.image_size == 512 and cfg.patch_to_input_scale == pytest.approx(512 / 64)
    with pytest.raises(DeSAMInputError, match="multiple of 16"):
        _planner_for(nnunet_dirs, [[20, 64, 64]], [[1.0, 1.0, 1.0]], image_size=500, backbone="vit_b")
    with pytest.raises(DeSAMInputError, match="1024"):
        _planner_for(nnunet_dirs, [[20, 64, 64]], [[1.0, 1.0, 1.0]], image_size=2048, backbone="vit_b")


def test_small_dataset_caps_the_batch_size(nnunet_dirs):
    planner = _planner_for(nnunet_dirs, [[4, 8, 8]], [[1.0, 1.0, 1.0]])
    assert planner.plan_experiment()["configurations"][CONFIGURATION]["batch_size"] == 2


@pytest.mark.parametrize("spacing_xyz, shape_zyx, axis, slice_shape", [
    ((0.8, 0.8, 4.0), (10, 40, 48), 0, (40, 48)),   # thick axial slices: cut across z (numpy axis 0)
    ((4.0, 0.8, 0.8), (40, 48, 10), 2, (40, 48)),   # thick along x (numpy axis 2): transpose_forward moves it first
])
def test_slices_are_cut_across_the_lowest_resolution_axis(nnunet_dirs, spacing_xyz, shape_zyx, axis, slice_shape):
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    make_dataset(str(nnunet_dirs["nnUNet_raw"]), 11, num_cases=2, shape_zyx=shape_zyx, spacing_xyz=spacing_xyz)
    DatasetFingerprintExtractor(11, 1).run()  # the real fingerprint (cropping included); no preprocessing needed
    plans = DeSAMPlanner(11, backbone="tiny").plan_experiment()
    cfg = DeSAMConfig.from_configuration(plans["configurations"][CONFIGURATION])
    assert cfg.slicing_axis == axis and plans["transpose_forward"][0] == axis
    assert plans["configurations"][CONFIGURATION]["spacing"] == pytest.approx([0.8, 0.8])
    # in-plane median slice (after cropping the 2-voxel zero border) is covered by the square patch
    median = plans["configurations"][CONFIGURATION]["median_image_size_in_voxels"]
    assert cfg.patch_size[0] >= max(median) and cfg.patch_size[0] == cfg.patch_size[1]
    assert max(median) <= max(slice_shape)


def test_default_backbone_is_medsam_lite_or_the_checkpoints_vit(tmp_path, monkeypatch):
    import torch
    from desam_nnu.planners.plan_and_preprocess import default_backbone
    monkeypatch.delenv("DESAM_SAM_CHECKPOINT", raising=False)
    assert default_backbone() == "medsam_lite"
    vit_l = tmp_path / "sam_vit_l.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, vit_l)
    assert default_backbone(str(vit_l)) == "vit_l"
    monkeypatch.setenv("DESAM_SAM_CHECKPOINT", str(vit_l))
    assert default_backbone() == "vit_l"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DeSAMInputError, match="junk.pth"):
        default_backbone(str(junk))


def test_medsam_lite_plans_pdmm_at_half_resolution(nnunet_dirs):
    """PDMM's logits at half the input (64 px for a 56-voxel patch): still finer than the patch."""
    planner = _planner_for(nnunet_dirs, [[20, 50, 36]], [[1.0, 1.0, 1.0]], backbone="medsam_lite")
    plans = planner.plan_experiment()
    cfg = DeSAMConfig.from_configuration(plans["configurations"][CONFIGURATION])
    assert cfg.patch_size == (56, 56) and cfg.image_size == 128 and cfg.mask_logits_size == (64, 64)
    assert dict(cfg.network_overrides) == {"pdmm_levels": 2}
    assert plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["pdmm_levels"] == 2
    # the network built from the plans gives logits of the planned size, from the (unchanged) encoder outputs
    net = build_desam(cfg.backbone, pretrained=False, **cfg.network_kwargs()).eval()
    assert len(net.pdmm.conv_blocks_context) == 2
    with torch.no_grad():
        features = net.encode(torch.rand(1, 3, 128, 128) * 255)
        logits, iou = net.decode(features, boxes=torch.tensor([[0.0, 0.0, 127.0, 127.0]]))
    assert [tuple(f.shape[1:]) for f in features] == [tuple(s) for s in cfg.cache.feature_shapes]
    assert tuple(logits.shape) == (1, 2, *cfg.mask_logits_size) and tuple(iou.shape) == (1, 2)
    # plans written before the decision (no network_overrides) build the full-resolution layout, as their checkpoints
    del plans["configurations"][CONFIGURATION]["desam"]["network_overrides"]
    old = DeSAMConfig.from_configuration(plans["configurations"][CONFIGURATION])
    assert build_desam(old.backbone, pretrained=False, **old.network_kwargs()).mask_size() == (128, 128)
    assert plans["configurations"][CONFIGURATION]["desam"]["image_size_rule"] == "clip(ceil64(2 * patch 56), 128, native 256)"
    assert cfg.pixel_mean == (0.0, 0.0, 0.0) and cfg.pixel_std == (255.0, 255.0, 255.0)
    # TinyViT stage 0 at S/2, stage 3 and the neck at S/4, float16; the cache when it pays for itself in a run
    assert cfg.cache.bytes_per_slice == (128 * 64 * 64 + 320 * 32 * 32 + 256 * 32 * 32) * 2
    assert cfg.cache.default == "auto"


def test_vit_plans_keep_the_official_pdmm_and_the_auto_cache_policy(nnunet_dirs):
    planner = _planner_for(nnunet_dirs, [[20, 50, 36]], [[1.0, 1.0, 1.0]], backbone="tiny")
    cfg = DeSAMConfig.from_configuration(planner.plan_experiment()["configurations"][CONFIGURATION])
    assert cfg.cache.default == "auto" and cfg.image_size == 256
    assert cfg.network_overrides == () and cfg.mask_logits_size == (64, 64)  # the official layout: S/4


@pytest.mark.parametrize("backbone, image_size, logits, normalisation", [
    ("medsam_lite", 128, 128, "unit_range"),  # TinyViT's tokens at S/4: the decoder's logits at the input
    ("vit_b", 256, 64, "per_image_zscore")])  # the official's: S/16 tokens, logits at S/4, z-scored slices
def test_dapsam_plans_take_the_familys_decisions(nnunet_dirs, backbone, image_size, logits, normalisation):
    planner = _planner_for(nnunet_dirs, [[30, 50, 40]] * 3, [[2.0, 1.0, 1.0]] * 3, backbone=backbone, family="dapsam")
    conf = planner.plan_experiment()["configurations"][CONFIGURATION]
    cfg = DeSAMConfig.from_configuration(conf)
    assert cfg.family == "dapsam" and cfg.prompts is None and cfg.network_overrides == ()
    assert cfg.patch_size == (56, 56) and cfg.image_size == image_size and cfg.mask_logits_size == (logits, logits)
    assert cfg.input_normalisation == normalisation and cfg.cache.default == "online"
    assert (cfg.pixel_mean, cfg.pixel_std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert conf["architecture"]["network_class_name"] == "desam_nnu.model.DAPSAM"
    with torch.device("meta"):  # the plans alone build the network (shapes only)
        net = cfg.build_network()
    assert net.image_size == image_size and net.prompt_generator.grid == image_size // (4 if backbone == "medsam_lite" else 16)


def test_an_unknown_family_is_refused(nnunet_dirs):
    with pytest.raises(DeSAMInputError, match="unknown network family 'unet'"):
        _planner_for(nnunet_dirs, [[30, 50, 40]], [[2.0, 1.0, 1.0]], backbone="tiny", family="unet")


@pytest.mark.parametrize("backbone, shape, patch, image_size", [
    ("vit_b", [40, 50, 35], [4, 64, 64], 256),  # the ACDC layout: SAM's input 4x the patch, from 256 px
    ("vit_b", [3, 300, 280], [3, 256, 256], 1024),  # thinner than 4 slices; SAM's 1024 caps the patch
    ("medsam_lite", [40, 50, 35], [4, 64, 64], 128),  # ours on TinyViT: 2x the patch, as DeSAM's medsam_lite
])
def test_masksam_plans_a_3d_configuration(nnunet_dirs, backbone, shape, patch, image_size):
    from desam_nnu.config import CONFIGURATION_3D
    planner = _planner_for(nnunet_dirs, [shape], [[1.0, 1.0, 1.0]], backbone=backbone, family="masksam")
    conf = planner.plan_experiment()["configurations"][CONFIGURATION_3D]
    assert conf["patch_size"] == patch and conf["spacing"] == [1.0, 1.0, 1.0] and conf["batch_size"] == 2
    cfg = DeSAMConfig.from_configuration(conf)
    assert cfg.image_size == image_size and cfg.slices_per_patch == patch[0]
    assert cfg.mask_logits_size == tuple(patch[1:])
    assert conf["architecture"]["arch_kwargs"]["num_frames"] == patch[0]
    with pytest.raises(DeSAMInputError, match="takes a multiple of"):
        _planner_for(nnunet_dirs, [shape], [[1.0, 1.0, 1.0]], backbone=backbone, family="masksam",
                     image_size=160 + 16)
