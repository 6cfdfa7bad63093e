"""Simulated scanner shifts at five severities, for ``desam_robustness``: TorchIO's fixed-parameter transforms
(MONAI's Rician noise, which TorchIO lacks), at the levels ROOD-MRI published (Boone et al., arXiv 2203.06060).

A shift is drawn once per (case, shift, seed): the random part (bias-field polynomial, motion path, ghosting
and downsampling axis, noise) does not depend on the level, and the level only scales it. So level 0 is the
image itself, the same seed gives the same volume, and a higher level is the same corruption, stronger.
Images only: labels are never shifted, and every shift keeps the image grid (size, spacing, origin,
direction), so the reference labels still fit.
"""
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

LEVELS = (1, 2, 3, 4, 5)
BIAS_ORDER = 3  # TorchIO's default polynomial order: C(3 + 3, 3) = 20 coefficients in 3D
BIAS_COEFFICIENTS = 20
MAX_MOTIONS = 10


@dataclass(frozen=True)
class Shift:
    """One kind of shift: its parameters at levels 1-5 and how to apply one level to one channel."""

    name: str
    what: str
    levels: Tuple  # the level's parameter(s), index 0 = level 1
    apply: Callable[[tio.ScalarImage, object, np.random.Generator], torch.Tensor]


def _rescaled_gamma(image: tio.ScalarImage, gamma: float, rng: np.random.Generator) -> torch.Tensor:
    """Gamma on the intensities mapped to [0, 1] and back: a contrast change that min-max or z-score
    normalisation does not undo (TorchIO's Gamma on raw intensities would also change their scale)."""
    lo, hi = float(image.data.min()), float(image.data.max())
    unit = tio.RescaleIntensity(out_min_max=(0, 1))(image)
    return tio.RescaleIntensity(out_min_max=(lo, hi))(tio.Gamma(gamma)(unit)).data


def _bias_field(image: tio.ScalarImage, coefficient: float, rng: np.random.Generator) -> torch.Tensor:
    """A multiplicative smooth field exp(polynomial); the polynomial's direction is drawn, ``coefficient`` scales it."""
    direction = rng.uniform(-1, 1, BIAS_COEFFICIENTS)
    return tio.BiasField(coefficients=list(coefficient * direction), order=BIAS_ORDER)(image).data


def _rician(image: tio.ScalarImage, std: float, rng: np.random.Generator) -> torch.Tensor:
    """Rician noise |x + n1 + i n2|, std relative to the image's intensity standard deviation (MONAI)."""
    from monai.transforms import RandRicianNoise
    noise = RandRicianNoise(prob=1.0, std=std, relative=True, sample_std=False, channel_wise=True)
    noise.set_random_state(int(rng.integers(2 ** 31)))  # the same draws at every level, scaled by std
    return torch.as_tensor(np.asarray(noise(image.data.float())), dtype=torch.float32)


def _blur(image: tio.ScalarImage, std_mm: float, rng: np.random.Generator) -> torch.Tensor:
    return tio.Blur(std=(std_mm, std_mm, std_mm))(image).data


def _ghosting(image: tio.ScalarImage, ghosts_intensity: Tuple[int, float], rng: np.random.Generator) -> torch.Tensor:
    """k-space ghosts along one drawn axis (the phase-encoding direction)."""
    axis = int(rng.integers(3))
    num_ghosts, intensity = ghosts_intensity
    return tio.Ghosting(num_ghosts=num_ghosts, axis=axis, intensity=intensity, restore=None)(image).data


def _motion(image: tio.ScalarImage, degrees_mm_moves: Tuple[float, float, int],
            rng: np.random.Generator) -> torch.Tensor:
    """Rigid movements of up to the given degrees and mm at evenly spaced times of the k-space acquisition
    (TorchIO's Motion); the movements are a prefix of one drawn path of 10."""
    degrees, mm, n = degrees_mm_moves
    rotations, translations = rng.uniform(-1, 1, (MAX_MOTIONS, 3)), rng.uniform(-1, 1, (MAX_MOTIONS, 3))
    times = np.arange(1, n + 1) / (n + 1)
    return tio.Motion(degrees=degrees * rotations[:n], translation=mm * translations[:n], times=times,
                      image_interpolation="linear")(image).data


def _anisotropy(image: tio.ScalarImage, factor: float, rng: np.random.Generator) -> torch.Tensor:
    """Downsampled by ``factor`` along one drawn axis and resampled back onto the image's own grid (TorchIO's
    RandomAnisotropy, fixed: nearest-neighbour down, linear up). Its effect grows with the factor overall but not
    step by step: the coarse grid meets the volume's edge differently at each factor."""
    axis = int(rng.integers(3))
    return tio.RandomAnisotropy(axes=(axis,), downsampling=(factor, factor))(image).data


SHIFTS: Dict[str, Shift] = {s.name: s for s in (
    Shift("bias_field", "bias field, polynomial coefficients", (0.3, 0.6, 0.9, 1.2, 1.5), _bias_field),
    Shift("gamma_down", "gamma < 1 on [0, 1] intensities", (0.86, 0.72, 0.58, 0.44, 0.30), _rescaled_gamma),
    Shift("gamma_up", "gamma > 1 on [0, 1] intensities", (1.4, 1.8, 2.2, 2.6, 3.0), _rescaled_gamma),
    Shift("rician_noise", "Rician noise, std / image std", (0.16, 0.32, 0.48, 0.64, 0.80), _rician),
    Shift("blur", "Gaussian blur, std in mm", (0.8, 1.6, 2.4, 3.2, 4.0), _blur),
    Shift("ghosting", "ghosts and their intensity", ((3, 0.5), (5, 1.0), (7, 1.5), (9, 2.0), (11, 2.5)), _ghosting),
    Shift("motion", "motion: degrees, mm, movements", tuple((lv, 2 * lv, 2 * lv) for lv in LEVELS), _motion),
    # ROOD-MRI goes to 10x; a hippocampus crop is about 35 voxels, so 4x (9 voxels left) is already severe
    Shift("anisotropy", "downsampling factor along one axis", tuple(np.linspace(1.5, 4.0, 5).round(3)), _anisotropy),
)}


def _generator(case: str, shift: str, seed: int) -> np.random.Generator:
    """The draws of one (case, shift, seed), the same at every level (a stable hash: not Python's ``hash``)."""
    return np.random.default_rng([zlib.crc32(f"{case}\0{shift}".encode()), seed])


def shift_channels(channels: Sequence[sitk.Image], shift: str, level: int, case: str, seed: int) -> list:
    """``channels`` of one case with ``shift`` at ``level`` (0: unchanged), each on its own grid, as float32."""
    if level == 0:
        return list(channels)
    spec = SHIFTS[shift]
    if not 1 <= level <= len(spec.levels):
        raise ValueError(f"level {level}: use 0 to {len(spec.levels)}")
    return apply_shift(channels, shift, spec.levels[level - 1], case, seed)


def apply_shift(channels: Sequence[sitk.Image], shift: str, parameter, case: str, seed: int) -> list:
    """``channels`` with ``shift`` at any ``parameter`` (a level's, or e.g. zero strength), as float32.

    Every channel gets the same draws, as one scanner would corrupt all of a case's sequences alike."""
    out = []
    for image in channels:
        data, affine = tio.io.sitk_to_nib(sitk.Cast(image, sitk.sitkFloat32))
        with torch.random.fork_rng():  # the caller's torch RNG is left as it was
            torch.manual_seed(0)  # TorchIO's Random* wrappers draw from torch: fixed, the choices are ours
            shifted = SHIFTS[shift].apply(tio.ScalarImage(tensor=torch.as_tensor(data), affine=affine), parameter,
                                          _generator(case, shift, seed))
        result = tio.io.nib_to_sitk(shifted.float(), affine)
        result.CopyInformation(image)  # the very same grid, bit for bit, whatever the RAS round trip did
        out.append(result)
    return out
