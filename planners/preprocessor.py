"""DeSAMPreprocessor: nnU-Net's DefaultPreprocessor that finds our normalisation classes.

nnU-Net 2.8.1 resolves normalisation schemes by name inside ``nnunetv2/preprocessing`` only
(``DefaultPreprocessor._normalize``), and ours live in ``desam_nnu.planners.normalization``.
``_normalize`` is the smallest method holding that lookup, so it is the one we override. Everything
else (transpose, crop, resample, foreground sampling, blosc2 export) is nnU-Net's.
"""
from typing import List, Type, Union

import numpy as np
import nnunetv2
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from desam_nnu.errors import DeSAMInputError
from desam_nnu.planners.dataset_checks import nan_voxels
from desam_nnu.planners.normalization import SCHEMES


def resolve_normalization(name: str) -> Type[ImageNormalization]:
    """Our schemes by name first, then nnU-Net's own (so a plans file may mix both)."""
    if name in SCHEMES:
        return SCHEMES[name]
    cls = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing", "normalization"), name,
                                      "nnunetv2.preprocessing.normalization")
    if cls is None:
        raise RuntimeError(f"normalization scheme {name!r} is neither ours nor nnU-Net's")
    return cls


class DeSAMPreprocessor(DefaultPreprocessor):
    """nnU-Net's preprocessing with SAM's 0..255 intensity mappings and file-naming errors."""

    def _normalize(self, data: np.ndarray, seg: np.ndarray, configuration_manager: ConfigurationManager,
                   foreground_intensity_properties_per_channel: dict) -> np.ndarray:
        for c in range(data.shape[0]):
            normalizer = resolve_normalization(configuration_manager.normalization_schemes[c])(
                use_mask_for_norm=configuration_manager.use_mask_for_norm[c],
                intensityproperties=foreground_intensity_properties_per_channel[str(c)])
            data[c] = normalizer.run(data[c], seg[0])
        return data

    def run_case(self, image_files: List[str], seg_file: Union[str, None], plans_manager: PlansManager,
                 configuration_manager: ConfigurationManager, dataset_json: Union[dict, str]):
        """nnU-Net's run_case, refusing NaN voxels; a failure names the case's files."""
        for f in list(image_files) + ([seg_file] if seg_file else []):
            nans = nan_voxels(f)
            if nans:
                raise DeSAMInputError(f"{f}: contains {nans} NaN voxel(s)")
        try:
            return super().run_case(image_files, seg_file, plans_manager, configuration_manager, dataset_json)
        except Exception as e:
            files = ", ".join(list(image_files) + ([seg_file] if seg_file else []))
            raise DeSAMInputError(f"{files}: preprocessing failed ({type(e).__name__}: {e})") from e

    def run_case_npy(self, data: np.ndarray, seg: Union[np.ndarray, None], properties: dict,
                     plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     dataset_json: Union[dict, str]):
        """Refuse NaN voxels (from readers that keep them) before they become a NaN percentile window."""
        nans = int(np.isnan(data).sum())
        if nans:
            raise DeSAMInputError(f"image contains {nans} NaN voxel(s)")
        return super().run_case_npy(data, seg, properties, plans_manager, configuration_manager, dataset_json)
