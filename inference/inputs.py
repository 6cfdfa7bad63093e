"""The input folder of ``desam_predict``: cases in nnU-Net's naming, checked one by one before predicting.

nnU-Net groups ``CASE_XXXX<ending>`` files by stripping the channel suffix and fails deep inside a
worker (taking every other case with it) when a case is incomplete or unreadable. Here each case is
checked up front and a bad case becomes one line naming its file, while the others go on.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import SimpleITK as sitk

from desam_nnu.errors import DeSAMInputError
from desam_nnu.planners.dataset_checks import truncated_nifti

SITK_HEADER_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class InputCases:
    """Cases that can be predicted (case -> channel files in order) and those that cannot (case -> why)."""

    cases: Dict[str, List[str]] = field(default_factory=dict)
    failures: Dict[str, str] = field(default_factory=dict)

    def part(self, num_parts: int, part_id: int) -> "InputCases":
        """Every ``num_parts``-th case from ``part_id`` on, over all cases (good and bad) in sorted order: the
        rule of ``nnUNetv2_predict -num_parts -part_id``, so parts are disjoint and together all cases."""
        names = sorted(set(self.cases) | set(self.failures))[part_id::num_parts]
        return InputCases({c: self.cases[c] for c in names if c in self.cases},
                          {c: self.failures[c] for c in names if c in self.failures})


def _image_problem(path: str, needs_3d: bool) -> Optional[str]:
    """Why an image file cannot be predicted (unreadable, truncated, 2D for a 3D model), or None."""
    why = truncated_nifti(path)
    if why:
        return why
    if not path.endswith(SITK_HEADER_ENDINGS):
        return None  # other formats are left to nnU-Net's reader; a failure there still names the case
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        return f"unreadable image ({' '.join(str(e).split())[:160]})"
    size = reader.GetSize()
    if needs_3d and (len(size) < 3 or min(size[:3]) == 1):
        return f"a 2D image ({' x '.join(str(s) for s in size)}); this model predicts 3D volumes"
    return None


def collect_cases(folder: str, file_ending: str, channel_names: Dict[str, str], needs_3d: bool = True) -> InputCases:
    """Group ``folder``'s files into cases and check each; an empty or missing folder is an error."""
    if not os.path.isdir(folder):
        raise DeSAMInputError(f"{folder}: input folder does not exist")
    files = sorted(f for f in os.listdir(folder) if f.endswith(file_ending) and not f.startswith("."))
    if not files:
        raise DeSAMInputError(f"{folder}: no {file_ending} images (nnU-Net naming: CASE_0000{file_ending}, "
                              f"CASE_0001{file_ending} for a second channel, ...)")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    channels: Dict[str, Dict[int, str]] = {}
    result = InputCases()
    for f in files:
        m = pattern.match(f)
        if not m:
            result.failures[f[: -len(file_ending)]] = (f"{os.path.join(folder, f)}: not named CASE_XXXX{file_ending} "
                                                       f"(nnU-Net's channel suffix, _0000 for the first channel)")
            continue
        channels.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    expected = len(channel_names)
    described = ", ".join(f"_{int(k):04d} {v}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
    for case, found in sorted(channels.items()):
        missing = [c for c in range(expected) if c not in found]
        extra = sorted(c for c in found if c >= expected)
        if missing:
            path = os.path.join(folder, f"{case}_{missing[0]:04d}{file_ending}")
            result.failures[case] = f"{path}: missing; the model takes {expected} channel(s): {described}"
        elif extra:
            result.failures[case] = (f"{found[extra[0]]}: unexpected channel; the model takes {expected} "
                                     f"channel(s): {described}")
        else:
            paths = [found[c] for c in range(expected)]
            problems = [(p, _image_problem(p, needs_3d)) for p in paths]
            bad = [(p, why) for p, why in problems if why]
            if bad:
                result.failures[case] = f"{bad[0][0]}: {bad[0][1]}"
            else:
                result.cases[case] = paths
    return result
