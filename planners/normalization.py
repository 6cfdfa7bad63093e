"""Intensity mappings to SAM's 0..255 range, as nnU-Net normalisation schemes.

SAM (and the official DeSAM) see 8-bit RGB images, so instead of nnU-Net's z-scoring every
channel is mapped to 0..255 during preprocessing. The trainer and predictor then only repeat or
mix channels into RGB (``desam_nnu.rgb``) and resize.

- ``SAMPercentileNormalization`` (MR and every non-CT channel): per image, clip to its own
  0.5/99.5 percentiles and rescale to 0..255; voxels that were exactly 0 stay 0. This is the
  official DeSAM's ``preprocess_nonct`` (precompute_embeddings.py), kept in float32. nnU-Net
  normalises after cropping to the nonzero bounding box, so with a wide zero border the
  percentiles are taken over fewer zeros than the official whole-volume ones.
- ``SAMCTNormalization`` (CT): clip to the dataset's foreground 0.5/99.5 percentiles from
  nnU-Net's fingerprint and rescale to 0..255, so one HU maps to one grey value in every case.

nnU-Net 2.8.1 looks normalisation classes up by name inside its own package only; our
preprocessor resolves these names first (``planners.preprocessor``).
"""
import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization

SAM_INTENSITY_RANGE = (0.0, 255.0)
PERCENTILES = (0.5, 99.5)


def _rescale_clipped(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip ``image`` in place to [lower, upper] and map that range linearly onto 0..255."""
    np.clip(image, lower, upper, out=image)
    if upper - lower <= 0:
        image[:] = 0  # a constant image carries no contrast; black is SAM's padding value too
        return image
    image -= lower
    image *= SAM_INTENSITY_RANGE[1] / (upper - lower)
    return image


class SAMPercentileNormalization(ImageNormalization):
    """Per-image 0.5/99.5 percentile clipping to 0..255 (the official DeSAM's MR mapping)."""

    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = True

    def run(self, image: np.ndarray, seg: np.ndarray = None) -> np.ndarray:
        image = image.astype(self.target_dtype, copy=False)
        was_zero = image == 0
        lower, upper = np.percentile(image, PERCENTILES)
        # the official code rescales by the clipped image's own min/max, which are these percentiles
        _rescale_clipped(image, float(lower), float(upper))
        image[was_zero] = 0
        return image


class SAMCTNormalization(ImageNormalization):
    """Dataset foreground 0.5/99.5 percentile window (from the fingerprint) mapped to 0..255."""

    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def run(self, image: np.ndarray, seg: np.ndarray = None) -> np.ndarray:
        props = self.intensityproperties
        image = image.astype(self.target_dtype, copy=False)
        return _rescale_clipped(image, float(props["percentile_00_5"]), float(props["percentile_99_5"]))


# dataset.json channel name (casefolded) -> scheme; every other name gets the percentile mapping
SCHEME_FOR_CHANNEL = {"ct": SAMCTNormalization}
SCHEMES = {cls.__name__: cls for cls in (SAMPercentileNormalization, SAMCTNormalization)}


def scheme_for_channel(channel_name: str) -> type[ImageNormalization]:
    """The SAM intensity mapping for a dataset.json channel name."""
    return SCHEME_FOR_CHANNEL.get(channel_name.casefold(), SAMPercentileNormalization)
