"""DeSAM's online augmentation is nnU-Net's, at nnU-Net's strength on SAM's 0..255 intensities."""
import math
import random

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from desam_nnu.trainers.augmentation import augment_patches, patch_spread


def _patches(n: int = 24, size: int = 48, seed: int = 0):
    """n slices of a 0..255 image [n, 1, size, size] (a bright blob on a textured background, std about 50)
    with 8 padding columns (0, seg -1), and their labels [n, size, size]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 1, size, size), np.float32)
    seg = np.zeros((n, size, size), np.int64)
    for i in range(n):
        cy, cx = rng.uniform(15, 30, 2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        images[i, 0] = np.clip(80 + 30 * rng.standard_normal((size, size)) + 120 * blob, 0, 255)
        seg[i][blob] = 1
    images[:, :, :, -8:] = 0
    seg[:, :, -8:] = -1
    return images, seg


def _seeded(transforms, images, seg, seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return augment_patches(transforms, images, seg)


def test_the_spread_is_the_std_of_the_slice_pixels_not_the_padding():
    images, seg = _patches(2)
    spread = patch_spread(images[0], seg[0])
    assert spread.shape == (1, 1, 1)
    assert spread[0, 0, 0] == pytest.approx(images[0, 0, :, :-8].std(), rel=1e-5)
    assert patch_spread(np.zeros_like(images[0]), seg[0])[0, 0, 0] == 1  # a blank slice is left unscaled


def test_the_noise_has_nnunets_strength_relative_to_the_image():
    """nnU-Net's noise ``noise_variance=0.1`` (batchgeneratorsv2 draws it as the noise's std) on a unit-std
    (z-scored) image is 0.1 of the image's std; on a 0..255 slice it must be the same fraction, not 0.1
    grey values."""
    images, seg = _patches(8)
    noise = RandomTransform(GaussianNoiseTransform(noise_variance=(0.1, 0.1), p_per_channel=1,
                                                   synchronize_channels=True), apply_probability=1)
    out, out_seg = _seeded(noise, images, seg, 0)
    np.testing.assert_array_equal(out_seg, seg)
    for i in range(len(images)):
        inside = seg[i] != -1
        relative = (out[i, 0] - images[i, 0])[inside].std() / images[i, 0][inside].std()
        assert relative == pytest.approx(0.1, rel=0.08)


def test_nnunets_whole_augmentation_commutes_with_the_intensity_scale():
    """The same draws on an image scaled by 3 give the augmented image scaled by 3: every transform,
    the noise included, acts relative to the image, as on nnU-Net's z-scores; labels are unchanged."""
    transforms = nnUNetTrainer.get_training_transforms(
        (48, 48), (-math.pi, math.pi), None, (0, 1), False, use_mask_for_norm=[False], foreground_labels=[1])
    images, seg = _patches(24)
    out, out_seg = _seeded(transforms, images, seg, 3)
    scaled, scaled_seg = _seeded(transforms, 3 * images, seg, 3)
    np.testing.assert_array_equal(scaled_seg, out_seg)
    np.testing.assert_allclose(scaled, 3 * out, rtol=1e-4, atol=1e-3)
    assert not np.allclose(out, images)  # the draws did change the images
