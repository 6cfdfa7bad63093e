"""SAM's intensity mappings land in 0..255 and follow the official DeSAM / the fingerprint."""
import numpy as np
import pytest

from desam_nnu.planners.normalization import (SAMCTNormalization, SAMPercentileNormalization,
                                              scheme_for_channel)


def official_nonct(image_data: np.ndarray) -> np.ndarray:
    """The official DeSAM's preprocess_nonct intensity step (precompute_embeddings.py), before its uint8 cast."""
    lower, upper = np.percentile(image_data, 0.5), np.percentile(image_data, 99.5)
    pre = np.clip(image_data, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    pre[image_data == 0] = 0
    return pre


def test_percentile_mapping_matches_official_and_stays_in_range():
    rng = np.random.default_rng(0)
    img = (rng.gamma(2.0, 150.0, (8, 30, 30)) - 50).astype(np.float32)
    img[:, :3] = 0
    out = SAMPercentileNormalization(use_mask_for_norm=False, intensityproperties={}).run(img.copy())
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(255.0)
    np.testing.assert_allclose(out, official_nonct(img.astype(np.float64)), atol=1e-3)
    assert np.all(out[:, :3] == 0)


def test_percentile_mapping_of_a_constant_image_is_black():
    img = np.full((3, 5, 5), 7.0, np.float32)
    out = SAMPercentileNormalization(use_mask_for_norm=False, intensityproperties={}).run(img)
    assert np.all(out == 0)


def test_ct_mapping_uses_the_fingerprint_window():
    props = {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 50.0, "std": 80.0}
    img = np.array([-1000.0, -100.0, 100.0, 300.0, 3000.0], np.float32)
    out = SAMCTNormalization(use_mask_for_norm=False, intensityproperties=props).run(img)
    np.testing.assert_allclose(out, [0.0, 0.0, 127.5, 255.0, 255.0])


def test_channel_names_pick_the_scheme():
    assert scheme_for_channel("CT") is SAMCTNormalization
    assert scheme_for_channel("MRI") is SAMPercentileNormalization
    assert scheme_for_channel("T2") is SAMPercentileNormalization
