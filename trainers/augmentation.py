"""nnU-Net's own training augmentation (``nnUNetTrainer.get_training_transforms``) on DeSAM's 2D patches.

Only online batches are augmented: a cached feature belongs to one fixed image. The transforms are
nnU-Net's, unchanged: spatial (rotation, scaling), intensity (noise, blur, brightness, contrast,
low resolution, gamma) and mirroring. Two things differ from nnU-Net's data loader:

- patches are augmented in place at the planned patch size (nnU-Net samples a larger patch first so
  rotations have data at the corners; here the corners get SAM's black, as the slice's own padding);
- labels are shifted by one around the transforms: nnU-Net's last transform turns -1 into background,
  while DeSAM's -1 marks padding, where no prompt is placed and no loss is taken. Shifted, padding is
  0 inside the transforms, the area a rotation brings in is nnU-Net's -1 (made 0), and shifting back
  makes both -1 again.

Intensities are SAM's 0..255, not z-scores, so nnU-Net's additive noise (variance up to 0.1) is
nearly nothing here; the multiplicative and gamma transforms keep their effect.
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
        out = transforms(image=torch.from_numpy(np.ascontiguousarray(images[i])),
                         segmentation=torch.from_numpy(seg[i][None].astype(np.int16) + 1))
        out_images[i] = out["image"].numpy()
        out_seg[i] = out["segmentation"][0].numpy() - 1
    return out_images, out_seg
