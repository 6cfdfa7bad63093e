"""The robustness study's scanner shifts (inference/shifts.py) on a small synthetic volume with a rotated grid."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic import synthetic_case

from desam_nnu.inference.shifts import LEVELS, SHIFTS, apply_shift, shift_channels

# the parameter at which each shift does nothing (zero strength), run through the real transforms
ZERO_STRENGTH = {"bias_field": 0.0, "gamma_down": 1.0, "gamma_up": 1.0, "rician_noise": 0.0, "blur": 0.0,
                 "ghosting": (3, 0.0), "motion": (0.0, 0.0, 2), "anisotropy": 1.0}


@pytest.fixture(scope="module")
def volume() -> sitk.Image:
    images, _ = synthetic_case((20, 40, 48), np.random.default_rng(3))
    image = sitk.GetImageFromArray(images[0])
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-20.0, 15.0, 7.5))
    rotated = sitk.VersorRigid3DTransform()
    rotated.SetRotation((0.0, 0.0, 1.0), 0.3)
    image.SetDirection(rotated.GetMatrix())
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_every_shift_is_listed_with_five_levels():
    assert set(SHIFTS) == set(ZERO_STRENGTH)
    assert all(len(s.levels) == len(LEVELS) == 5 for s in SHIFTS.values())
    assert SHIFTS["rician_noise"].levels == (0.16, 0.32, 0.48, 0.64, 0.80)  # ROOD-MRI's published levels
    assert SHIFTS["ghosting"].levels[-1] == (11, 2.5)


@pytest.mark.parametrize("shift", sorted(ZERO_STRENGTH))
def test_zero_strength_returns_the_input(volume, shift):
    out, = apply_shift([volume], shift, ZERO_STRENGTH[shift], "case_000", seed=0)
    assert _geometry(out) == _geometry(volume)
    scale = np.abs(_array(volume)).max()
    np.testing.assert_allclose(_array(out), _array(volume), atol=1e-3 * scale)
    assert shift_channels([volume], shift, 0, "case_000", 0)[0] is volume  # level 0: the input itself
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    shift_channels([volume], shift, 2, "case_000", 0)
    assert torch.rand(1) == expected  # the caller's torch RNG is untouched


def _deviation(shift: str, original: np.ndarray, shifted: np.ndarray) -> float:
    if shift == "bias_field":  # the field's size: spread of the log-intensity ratio inside the head
        inside = original > 100
        return float(np.std(np.log(np.maximum(shifted[inside], 1e-3) / original[inside])))
    return float(np.mean(np.abs(shifted - original)))


@pytest.mark.parametrize("shift", sorted(ZERO_STRENGTH))
def test_higher_levels_shift_more(volume, shift):
    original = _array(volume)
    deviations = [_deviation(shift, original, _array(shift_channels([volume], shift, lv, "case_000", 0)[0]))
                  for lv in LEVELS]
    assert deviations[0] > 0
    if shift in ("motion", "anisotropy"):
        # motion: a longer path of movements; anisotropy: TorchIO's nearest-neighbour downsampling, whose coarse grid
        # meets the volume's edge differently at each factor. Larger at level 5, though not step by step
        assert deviations[4] > deviations[0]
    else:
        assert all(b > a for a, b in zip(deviations, deviations[1:])), deviations


@pytest.mark.parametrize("shift", sorted(ZERO_STRENGTH))
def test_same_seed_same_volume_on_the_same_grid(volume, shift):
    a, = shift_channels([volume], shift, 3, "case_000", seed=7)
    b, = shift_channels([volume], shift, 3, "case_000", seed=7)
    np.testing.assert_array_equal(_array(a), _array(b))
    assert _geometry(a) == _geometry(volume) and a.GetPixelID() == sitk.sitkFloat32
    if shift in ("bias_field", "rician_noise", "motion"):  # the others draw nothing or only an axis (of 3)
        c, = shift_channels([volume], shift, 3, "case_000", seed=8)
        other_case, = shift_channels([volume], shift, 3, "case_001", seed=7)
        assert not np.array_equal(_array(a), _array(c)) and not np.array_equal(_array(a), _array(other_case))


def test_channels_of_a_case_get_the_same_draws(volume):
    a, b = shift_channels([volume, volume], "bias_field", 4, "case_000", seed=1)
    np.testing.assert_array_equal(_array(a), _array(b))
