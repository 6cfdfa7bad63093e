"""Simulated users: a prompts file (``desam_predict --prompts``) drawn from reference labels.

Prompted accuracy is measured as MedSAM (Ma et al., 2024) and DB-SAM measure it: the "user" gives the
reference's bounding box of each class on each slice, enlarged by a random margin, or clicks the class's
centre. The file written here is the one a person would give (``desam_nnu/schemas/prompts.schema.json``,
voxel coordinates (x, y, z) as ITK reads the image), so the prompted run is exactly the user-facing one.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from desam_nnu.atomic import atomic_path
from desam_nnu.errors import DeSAMInputError

MODES = ("box-per-slice", "box-per-range", "click")
DEFAULT_MODE = MODES[0]  # MedSAM's and DB-SAM's evaluation: a box on every slice that holds the class


def foreground_labels(dataset_json: Mapping) -> List[int]:
    """The class labels of a dataset.json, as nnU-Net's LabelManager counts them: every label value (regions
    flattened) except background (0) and the ignore label."""
    values: set = set()
    for name, value in dataset_json["labels"].items():
        if name != "ignore":
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(v for v in values if v != 0)


def _label_files(folder: str, file_ending: str) -> List[Tuple[str, str]]:
    """(case id, path) of every label map in ``folder``, sorted by case so that the random draws repeat."""
    if not os.path.isdir(folder):
        raise DeSAMInputError(f"{folder}: reference folder does not exist")
    names = sorted(f for f in os.listdir(folder) if f.endswith(file_ending) and not f.startswith("."))
    if not names:
        raise DeSAMInputError(f"{folder}: no label files (*{file_ending})")
    return [(n[:-len(file_ending)], os.path.join(folder, n)) for n in names]


def _read(path: str) -> Tuple[np.ndarray, Tuple[float, float]]:
    """The label map as [z, y, x] (a 2D map as one slice) and its in-plane spacing (x, y) in mm."""
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise DeSAMInputError(f"{path}: cannot read the label map ({lines[-1] if lines else 'SimpleITK'})") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise DeSAMInputError(f"{path}: not a 2D or 3D single-component label map")
    array = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()
    return (array[None] if array.ndim == 2 else array), (float(spacing[0]), float(spacing[1]))


def _bounds(mask: np.ndarray) -> List[int]:
    """Inclusive in-plane bounds [x0, y0, x1, y1] of a non-empty [y, x] mask."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def _jittered(box: List[int], shape_yx: Sequence[int], spacing_xy: Tuple[float, float], jitter_mm: float,
              rng: np.random.Generator) -> List[int]:
    """Each side moved outward by its own uniform 0..jitter_mm mm (MedSAM's and DB-SAM's box perturbation,
    there 0..20 pixels), in whole voxels of that axis, clipped to the image."""
    sx, sy = spacing_xy
    dx0, dy0, dx1, dy1 = (int(round(u / s)) for u, s in zip(rng.uniform(0.0, jitter_mm, 4), (sx, sy, sx, sy)))
    x0, y0, x1, y1 = box
    return [max(x0 - dx0, 0), max(y0 - dy0, 0), min(x1 + dx1, shape_yx[1] - 1), min(y1 + dy1, shape_yx[0] - 1)]


def _centre(mask: np.ndarray, spacing_xy: Tuple[float, float]) -> Tuple[int, int]:
    """(x, y) of the pixel of the largest connected component (8-connected) farthest from its boundary, in mm;
    among equally deep pixels (a rectangle's ridge) the one nearest the component's centroid, so that the
    click sits in the middle of the object and always on it, even where the centroid itself lies outside."""
    components, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        mask = components == int(np.argmax(sizes)) + 1
    sampling = (spacing_xy[1], spacing_xy[0])
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[1:-1, 1:-1]
    deepest = np.argwhere(depth >= depth.max() - 1e-6)  # [n, 2]: row, column
    centroid = np.argwhere(mask).mean(0)
    best = deepest[int(np.argmin((((deepest - centroid) * sampling) ** 2).sum(1)))]
    return int(best[1]), int(best[0])


def _class_prompts(mask: np.ndarray, mode: str, spacing_xy: Tuple[float, float], jitter_mm: float,
                   rng: np.random.Generator) -> Dict[str, list]:
    """One class's prompts in one case (mask [z, y, x], not empty)."""
    zs = np.nonzero(mask.any((1, 2)))[0]
    if mode == "click":
        return {"points": [{"point": [*_centre(mask[z], spacing_xy), int(z)], "positive": True} for z in zs]}
    if mode == "box-per-slice":
        ranges = [(int(z), int(z)) for z in zs]
    else:  # box-per-range: the contiguous runs of slices that hold the class
        ranges = [(int(r[0]), int(r[-1])) for r in np.split(zs, np.nonzero(np.diff(zs) > 1)[0] + 1)]
    boxes = []
    for z0, z1 in ranges:
        box = _jittered(_bounds(mask[z0:z1 + 1].any(0)), mask.shape[1:], spacing_xy, jitter_mm, rng)
        boxes.append({"box": box, "slices": [z0, z1]})
    return {"boxes": boxes}


def prompts_from_labels(labels_folder: str, file_ending: str, labels: Sequence[int], mode: str = DEFAULT_MODE,
                        jitter_mm: float = 0.0, seed: int = 0) -> dict:
    """The prompts document (voxel coordinates) a simulated user gives for every label map in ``labels_folder``:
    case id (the file name without ``file_ending``, as the images' case ids) -> class -> boxes or clicks.
    Every case gets an entry ({} without foreground); a class absent from a case has none. ``labels`` are the
    classes (dataset.json's, without background). The same seed gives the same file."""
    if mode not in MODES:
        raise DeSAMInputError(f"prompt mode {mode!r}: not one of {', '.join(MODES)}")
    if not np.isfinite(jitter_mm) or jitter_mm < 0:
        raise DeSAMInputError(f"jitter {jitter_mm} mm: must be 0 or more")
    rng = np.random.default_rng(seed)
    cases: Dict[str, dict] = {}
    for case, path in _label_files(labels_folder, file_ending):
        array, spacing_xy = _read(path)
        cases[case] = {}
        for label in sorted(int(v) for v in labels):
            mask = array == label
            if mask.any():
                cases[case][str(label)] = _class_prompts(mask, mode, spacing_xy, jitter_mm, rng)
    return {"coordinates": "voxel", "cases": cases}


def count_prompts(document: Mapping) -> Dict[int, int]:
    """Class -> number of prompts (boxes and clicks) over all cases of a prompts document."""
    counts: Dict[int, int] = {}
    for classes in document["cases"].values():
        for label, given in classes.items():
            counts[int(label)] = counts.get(int(label), 0) + sum(len(v) for v in given.values())
    return dict(sorted(counts.items()))


def write_prompts(document: Mapping, path: str) -> None:
    """Write the prompts file whole or not at all (temporary name, then rename), indented, with each list of
    numbers on one line so that a box or click reads as one line. (A JSON string holds no raw newline, so the
    pattern only meets the indented number lists.)"""
    text = re.sub(r"\[(\s*\n[-+\d.eE,\s]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(document, indent=2))
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(text + "\n")
    except OSError as e:
        raise DeSAMInputError(f"{path}: cannot write the prompts file ({e.strerror or e})") from None
