"""Synthetic nnU-Net raw datasets: MR-like volumes with two structures, written as NIfTI with real
geometry (anisotropic spacing, an origin and a rotated direction).

``make_demo_dataset`` writes the quick start's demo dataset (``Dataset900_Demo``): a head-like
volume with a smooth intensity bias field, Rician noise and two structures of varying size and
position, training cases in ``imagesTr``/``labelsTr`` and held-back cases, never trained on, in
``imagesTs``/``labelsTs``. ``make_dataset`` and ``synthetic_case`` are the smaller, plainer
volumes the tests use.
"""
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from desam_nnu.atomic import pid_alive
from desam_nnu.errors import DeSAMInputError

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


# ---------------------------------------------------------------------------------------------
# the quick start's demo dataset

DEMO_SHAPE_ZYX = (16, 64, 64)
DEMO_SPACING_XYZ = (0.9, 0.9, 3.0)  # thick slices, as clinical MR often has
DEMO_ORIGIN = (-31.5, 24.0, -18.0)


def _rotation(z_degrees: float, x_degrees: float) -> Tuple[float, ...]:
    """Row-major 3x3 direction: a rotation about z, then a tilt about x (an oblique acquisition)."""
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rx @ rz).ravel())


DEMO_DIRECTION = _rotation(20.0, 10.0)
DEMO_LABELS = {"background": 0, "structure_a": 1, "structure_b": 2}
DEMO_CHANNELS = {"0": "MRI"}
FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _ellipsoid(zyx_mm: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised radius (< 1 inside) of an axis-aligned ellipsoid, coordinates and sizes in mm."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(zyx_mm, centre, radii)))


def _soft(radius: np.ndarray, edge_mm: float, size_mm: float) -> np.ndarray:
    """Partial-volume membership: 1 inside, 0 outside, a smooth edge about ``edge_mm`` wide."""
    return 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) * size_mm / edge_mm, -50, 50)))


def demo_case(rng: np.random.Generator, shape_zyx: Tuple[int, int, int] = DEMO_SHAPE_ZYX,
              spacing_xyz: Sequence[float] = DEMO_SPACING_XYZ) -> Tuple[np.ndarray, np.ndarray]:
    """One MR-like volume [z, y, x] (int16) and its labels [z, y, x] in {0, 1, 2}.

    A head-like ellipsoid of soft tissue with low-frequency texture; structure 1 bright, structure 2
    dark, each an ellipsoid of random size and position, both inside the head and away from the
    first and last slices (which hold no structure); a smooth multiplicative bias field (about
    +-20%) and Rician noise on top, so the background is noise, not zeros.
    """
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    extent = (np.asarray(shape_zyx) - 1) * spacing_zyx
    zyx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij")
    mid = extent / 2
    z_lo, z_hi = 2 * spacing_zyx[0], extent[0] - 2 * spacing_zyx[0]  # two slices kept free at each end
    for _ in range(100):
        head_r = np.array([extent[0], rng.uniform(0.40, 0.46) * extent[1], rng.uniform(0.38, 0.46) * extent[2]])
        head_c = mid + np.array([0.0, *rng.uniform(-2.0, 2.0, 2)])
        a_r = np.array([rng.uniform(5.0, 10.0), rng.uniform(4.0, 9.0), rng.uniform(4.0, 8.0)])
        a_c = np.array([rng.uniform(z_lo + a_r[0], z_hi - a_r[0]), *(mid[1:] + rng.uniform(-8.0, 8.0, 2))])
        b_r = np.array([rng.uniform(4.0, 8.0), rng.uniform(3.0, 6.5), rng.uniform(3.0, 6.5)])
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.7, 1.1) * (a_r[1:].mean() + b_r[1:].mean())
        b_c = np.array([np.clip(a_c[0] + rng.uniform(-4.0, 4.0), z_lo + b_r[0], z_hi - b_r[0]),
                        a_c[1] + dist * np.sin(angle), a_c[2] + dist * np.cos(angle)])
        head = _ellipsoid(zyx, head_c, head_r)
        ra, rb = _ellipsoid(zyx, a_c, a_r), _ellipsoid(zyx, b_c, b_r)
        labels = np.zeros(shape_zyx, np.uint8)
        labels[rb < 1] = 2
        labels[ra < 1] = 1
        labels[head >= 0.97] = 0  # structures stay inside the head
        if (labels == 1).sum() >= 30 and (labels == 2).sum() >= 20:
            break
    # tissue: head with a low-frequency texture, bright and dark structures, a softer rim
    texture = sum(rng.uniform(-0.04, 0.04) * np.cos(2 * np.pi * sum(rng.uniform(-1.5, 1.5) * g / e
                                                                     for g, e in zip(zyx[1:], extent[1:]))
                                                     + rng.uniform(0, 2 * np.pi)) for _ in range(4))
    tissue = 400.0 * (1 + texture) * _soft(head, 1.5, head_r[1:].mean())
    tissue *= 1 - 0.35 * np.exp(-((head - 0.93) / 0.05) ** 2)  # a darker rim, like CSF
    contrast_a, contrast_b = rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.6)
    tissue *= 1 + contrast_a * _soft(ra, 0.5, a_r[1:].mean()) * (head < 0.97)
    tissue *= 1 - contrast_b * _soft(rb, 0.5, b_r[1:].mean()) * (ra >= 1) * (head < 0.97)
    # a smooth multiplicative bias field (receive-coil sensitivity), about +-20%
    phases = sum(rng.uniform(-0.6, 0.6) * g / e for g, e in zip(zyx, extent))
    bias = 1 + 0.1 * np.cos(2 * np.pi * phases + rng.uniform(0, 2 * np.pi)) \
        + 0.035 * sum(rng.uniform(-1, 1) * (g / e - 0.5) * 2 for g, e in zip(zyx, extent))
    sigma = rng.uniform(12.0, 22.0)
    real = tissue * bias + sigma * rng.standard_normal(shape_zyx)
    imag = sigma * rng.standard_normal(shape_zyx)
    image = np.sqrt(real ** 2 + imag ** 2)  # a magnitude image: Rician noise
    return np.round(image).clip(0, 32767).astype(np.int16), labels


def demo_files(num_cases: int, held_back: int) -> List[str]:
    """Every file of the demo dataset, relative to its folder: training cases first, then the held-back ones."""
    files = ["dataset.json"]
    for i in range(num_cases):
        images, labels = ("imagesTr", "labelsTr") if i < num_cases - held_back else ("imagesTs", "labelsTs")
        files += [f"{images}/demo_{i:03d}_0000{FILE_ENDING}", f"{labels}/demo_{i:03d}{FILE_ENDING}"]
    return files


def _is_complete(folder: str, num_cases: int, held_back: int) -> bool:
    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            if json.load(f).get("numTraining") != num_cases - held_back:
                return False
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(os.path.join(folder, f)) for f in demo_files(num_cases, held_back))


def _remove_stale_temporaries(raw_root: str, folder_name: str) -> None:
    """Temporary folders of writers that were killed (their pid is gone)."""
    prefix = f".{folder_name}.tmp-"
    for entry in os.listdir(raw_root):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(raw_root, entry), ignore_errors=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def make_demo_dataset(raw_root: str, dataset_id: int = 900, name: str = "Demo", num_cases: int = 12,
                      seed: int = 0, held_back: int = 3, log: Callable[[str], None] = _say) -> str:
    """Write ``DatasetXXX_Name`` into ``raw_root`` and return its folder (deterministic for ``seed``).

    ``num_cases - held_back`` cases go to imagesTr/labelsTr (``numTraining``), the last ``held_back``
    to imagesTs/labelsTs. The dataset is written into a temporary folder beside it and renamed into
    place, so it appears whole or not at all; a complete folder already there is reused.
    """
    if not 1 <= dataset_id <= 999:
        raise DeSAMInputError(f"dataset id {dataset_id}: use 1..999")
    if not _NAME.match(name):
        raise DeSAMInputError(f"dataset name {name!r}: use letters, digits, '_' and '-'")
    if num_cases < 1 or not 0 <= held_back < num_cases:
        raise DeSAMInputError(f"{num_cases} case(s) with {held_back} held back: need at least one training "
                              f"case and 0 <= held back < cases")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    raw_root = os.path.abspath(raw_root)
    folder = os.path.join(raw_root, folder_name)
    os.makedirs(raw_root, exist_ok=True)
    clash = [d for d in os.listdir(raw_root) if d.startswith(f"Dataset{dataset_id:03d}_") and d != folder_name
             and os.path.isdir(os.path.join(raw_root, d))]
    if clash:
        raise DeSAMInputError(f"{os.path.join(raw_root, clash[0])}: dataset id {dataset_id} is taken; "
                              f"choose another id")

    def reuse_or_fail() -> str:
        if _is_complete(folder, num_cases, held_back):
            log(f"{folder}: complete demo dataset already there, reused")
            return folder
        raise DeSAMInputError(f"{folder}: exists but is not a complete demo dataset of {num_cases} cases "
                              f"({held_back} held back); remove it or choose another id")

    if os.path.exists(folder):
        return reuse_or_fail()
    _remove_stale_temporaries(raw_root, folder_name)
    tmp = tempfile.mkdtemp(prefix=f".{folder_name}.tmp-{os.getpid()}-", dir=raw_root)
    try:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if held_back else ()):
            os.makedirs(os.path.join(tmp, sub))
        rng = np.random.default_rng(seed)
        files = demo_files(num_cases, held_back)[1:]
        for i in range(num_cases):
            image, labels = demo_case(rng)
            write_nifti(image, os.path.join(tmp, files[2 * i]), DEMO_SPACING_XYZ, DEMO_ORIGIN, DEMO_DIRECTION)
            write_nifti(labels, os.path.join(tmp, files[2 * i + 1]), DEMO_SPACING_XYZ, DEMO_ORIGIN, DEMO_DIRECTION)
        dataset_json = {
            "name": name,
            "description": f"Synthetic MR-like demo volumes (desam_nnu.demo, seed {seed}); imagesTs/labelsTs "
                           f"hold {held_back} held-back case(s) that are never trained on",
            "channel_names": DEMO_CHANNELS,
            "labels": DEMO_LABELS,
            "numTraining": num_cases - held_back,
            "file_ending": FILE_ENDING,
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(dataset_json, f, indent=2)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the dataset gets a normal folder's mode
        try:
            os.rename(tmp, folder)
        except OSError:  # another writer finished first
            if not os.path.exists(folder):
                raise
            return reuse_or_fail()
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{folder}: wrote {num_cases - held_back} training and {held_back} held-back case(s)")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
