"""nnU-Net's own training augmentation (``nnUNetTrainer.get_training_transforms``) on DeSAM's 2D patches.

Only online batches are augmented: a cached feature belongs to one fixed image. The transforms are
nnU-Net's, unchanged: spatial (rotation, scaling), intensity (noise, blur, brightness, contrast,
low resolution, gamma) and mirroring. Three things differ from nnU-Net's data loader:

- patches are augmented in place at the planned patch size (nnU-Net samples a larger patch first so
  rotations have data at the corners; here the corners get SAM's black, as the slice's own padding);
- labels are shifted by one around the transforms: nnU-Net's last transform turns -1 into background,
  while DeSAM's -1 marks padding, where no prompt is placed and no loss is taken. Shifted, padding is
  0 inside the transforms, the area a rotation brings in is nnU-Net's -1 (made 0), and shifting back
  makes both -1 again.
- intensities are SAM's 0..255, not nnU-Net's z-scores. nnU-Net's additive Gaussian noise (std up to
  0.1 of a unit-std image: batchgeneratorsv2 uses its ``noise_variance`` as the std) would be nearly
  nothing on them (0.1 grey values against an image std of about 50), so each patch channel is divided
  by its spread (the std of its non-padding pixels) before the transforms and multiplied back after. Every other transform (spatial, blur, brightness,
  contrast, low resolution, gamma with kept statistics) commutes with that scaling, and 0 (padding,
  SAM's black) stays 0, so only the noise changes: it gets nnU-Net's strength relative to the image.
"""
from typing import Tuple

import numpy as np
import torch


def training_transforms(trainer):
    """nnU-Net's transforms for the trainer's 2D patch (its rotation range and mirror axes)."""
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    return trainer.get_training_transforms(
        tuple(trainer.desam.patch_size), rotation, None, mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)


def augment_patches(transforms, images: np.ndarray, seg: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """images [n, C, p, p] float32 (0..255), seg [n, p, p] (-1 padding) -> both augmented, same shapes."""
    out_images = np.empty_like(images)
    out_seg = np.empty_like(seg)
    for i in range(len(images)):
        spread = patch_spread(images[i], seg[i])  # [C, 1, 1]
        out = transforms(image=torch.from_numpy(np.ascontiguousarray(images[i] / spread)),
                         segmentation=torch.from_numpy(seg[i][None].astype(np.int16) + 1))
        out_images[i] = out["image"].numpy() * spread
        out_seg[i] = out["segmentation"][0].numpy() - 1
    return out_images, out_seg


def patch_spread(image: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """image [C, p, p], seg [p, p] (-1 padding) -> [C, 1, 1] float32: each channel's std over the slice's
    own pixels (what nnU-Net's z-scoring divides by), 1 where a channel is constant."""
    inside = seg != -1
    pixels = image[:, inside] if inside.any() else image.reshape(len(image), -1)
    std = pixels.std(axis=1).astype(np.float32)
    return np.where(std > 0, std, np.float32(1))[:, None, None]
