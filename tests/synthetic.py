"""Small synthetic nnU-Net raw datasets: MR-like volumes with two structures, written as NIfTI
with real geometry (anisotropic spacing, an origin and a rotated direction)."""
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

# a rotation about z by 30 degrees: a non-identity direction, as scanners write
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
ROTATED = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


def synthetic_case(shape_zyx: Tuple[int, int, int], rng: np.random.Generator,
                   num_channels: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Channels [C, z, y, x] (float32, zero border like skull-stripped MR) and labels [z, y, x] in {0, 1, 2}."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    c1 = rng.uniform(-0.3, 0.0, 3)
    c2 = rng.uniform(0.05, 0.3, 3)
    obj1 = ((z - c1[0]) / 0.5) ** 2 + ((y - c1[1]) / 0.3) ** 2 + ((x - c1[2]) / 0.25) ** 2 < 1
    obj2 = ((z - c2[0]) / 0.4) ** 2 + ((y - c2[1]) / 0.25) ** 2 + ((x - c2[2]) / 0.3) ** 2 < 1
    labels = np.zeros(shape_zyx, np.uint8)
    labels[obj1] = 1
    labels[obj2 & ~obj1] = 2
    images = []
    for c in range(num_channels):
        img = 300 + 40 * rng.standard_normal(shape_zyx)
        img[labels == 1] += 250 + 50 * c
        img[labels == 2] += 500 - 80 * c
        img[:, :2] = 0  # a zero border, as after skull stripping
        images.append(img.astype(np.float32))
    return np.stack(images), labels


def write_nifti(array_zyx: np.ndarray, path: str, spacing_xyz: Sequence[float],
                origin: Sequence[float] = (-20.0, 15.0, 7.5), direction: Sequence[float] = ROTATED) -> None:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing([float(s) for s in spacing_xyz])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    sitk.WriteImage(img, path)


def make_dataset(raw_root: str, dataset_id: int, name: str = "Synth", num_cases: int = 4,
                 shape_zyx: Tuple[int, int, int] = (10, 40, 48), spacing_xyz: Sequence[float] = (0.8, 0.8, 4.0),
                 num_channels: int = 1, channel_names: Optional[Dict[str, str]] = None,
                 seed: int = 0) -> str:
    """Write DatasetXXX_Name (imagesTr, labelsTr, dataset.json) and return its folder."""
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        images, labels = synthetic_case(shape_zyx, rng, num_channels)
        for c in range(num_channels):
            write_nifti(images[c], os.path.join(folder, "imagesTr", f"case_{i:03d}_{c:04d}.nii.gz"), spacing_xyz)
        write_nifti(labels, os.path.join(folder, "labelsTr", f"case_{i:03d}.nii.gz"), spacing_xyz)
    dataset_json = {
        "channel_names": channel_names or {str(c): "MRI" for c in range(num_channels)},
        "labels": {"background": 0, "structure_a": 1, "structure_b": 2},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder
