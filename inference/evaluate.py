"""Score a folder of predictions against reference label maps: nnU-Net's metrics, plus surface Dice.

Dice and IoU come from nnU-Net's own ``compute_metrics_on_folder``, so the numbers equal those of
``nnUNetv2_evaluate_folder`` and of a trainer's ``validation/summary.json``. Overlap metrics
forgive boundary errors on large structures and punish them on small ones; the normalised surface
Dice (Nikolov et al., 2021) asks instead how much of each boundary lies within a tolerance (mm) of
the other, which is what a reader correcting a contour cares about. It is added under the key
``"NSD"`` next to nnU-Net's metrics, and the summary is written whole or not at all.
"""
import multiprocessing
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from desam_nnu.atomic import atomic_path
from desam_nnu.errors import DeSAMInputError

LabelOrRegion = Union[int, Tuple[int, ...]]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _box_around(mask: np.ndarray) -> Tuple[slice, ...]:
    """Bounding box of ``mask`` plus one voxel (clipped): surfaces and distances inside it are unchanged."""
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def normalised_surface_dice(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float, ignore_mask: Optional[np.ndarray] = None) -> float:
    """Fraction of the surface voxels of both masks lying within ``tolerance_mm`` of the other surface.

    Surfaces are the boundary voxels (binary erosion); distances are Euclidean in mm (``spacing`` per
    array axis). Both masks empty: NaN, as nnU-Net's Dice; one empty: 0. Voxels under ``ignore_mask``
    (nnU-Net's ignore label) are taken out of both masks first, as nnU-Net leaves them out of Dice.
    """
    ref, pred = np.asarray(ref, bool), np.asarray(pred, bool)
    if ref.shape != pred.shape or len(spacing) != ref.ndim:
        raise ValueError(f"masks {ref.shape} / {pred.shape} and spacing {tuple(spacing)} disagree")
    if ignore_mask is not None:
        ref, pred = ref & ~ignore_mask, pred & ~ignore_mask
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return float("nan")
    if not has_ref or not has_pred:
        return 0.0
    box = _box_around(ref | pred)  # the work shrinks to the structure, the result stays the same
    s_ref, s_pred = _surface(ref[box]), _surface(pred[box])
    sampling = [float(s) for s in spacing]
    # distance of every voxel to the nearest surface voxel of the other mask (EDT measures to zeros)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sampling)
    to_ref = ndimage.distance_transform_edt(~s_ref, sampling=sampling)
    limit = tolerance_mm * (1 + 1e-9)  # a distance equal to the tolerance is within it, rounding aside
    close = int((to_pred[s_ref] <= limit).sum()) + int((to_ref[s_pred] <= limit).sum())
    return close / (int(s_ref.sum()) + int(s_pred.sum()))


def _mask(seg: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    if np.isscalar(label_or_region):
        return seg == label_or_region
    return np.isin(seg, list(label_or_region))


def _case_nsd(reference_file: str, prediction_file: str, image_reader_writer,
              labels_or_regions: List[LabelOrRegion], ignore_label: Optional[int],
              tolerance_mm: float) -> Dict[LabelOrRegion, float]:
    """NSD per label/region of one case; spacing from the reference, in the reader's array axis order."""
    seg_ref, props = image_reader_writer.read_seg(reference_file)
    seg_pred, _ = image_reader_writer.read_seg(prediction_file)
    seg_ref, seg_pred = seg_ref[0], seg_pred[0]  # nnU-Net readers return [1, (z,) y, x]
    spacing = list(props["spacing"])[-seg_ref.ndim:]
    ignore = seg_ref == ignore_label if ignore_label is not None else None
    return {r: normalised_surface_dice(_mask(seg_ref, r), _mask(seg_pred, r), spacing, tolerance_mm, ignore)
            for r in labels_or_regions}


def _nanmean(values: List[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN without a warning
        return float(np.nanmean(values)) if len(values) else float("nan")


def _add_nsd(result: Dict[str, Any], ref_folder: str, pred_folder: str, names: List[str], image_reader_writer,
             labels_or_regions: List[LabelOrRegion], ignore_label: Optional[int], tolerance_mm: float,
             num_processes: int) -> None:
    """Put "NSD" into every case's and class's metrics and into the foreground mean (both nanmeans)."""
    jobs = [(os.path.join(ref_folder, f), os.path.join(pred_folder, f), image_reader_writer, labels_or_regions,
             ignore_label, tolerance_mm) for f in names]
    if num_processes > 1 and len(jobs) > 1:  # spawn, as nnU-Net's own evaluation pool
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            per_case = pool.starmap(_case_nsd, jobs)
    else:
        per_case = [_case_nsd(*job) for job in jobs]
    by_name = dict(zip(names, per_case))
    for case in result["metric_per_case"]:
        nsd = by_name[os.path.basename(case["prediction_file"])]
        for r in labels_or_regions:
            case["metrics"][r]["NSD"] = nsd[r]
    for r in labels_or_regions:
        result["mean"][r]["NSD"] = _nanmean([c["metrics"][r]["NSD"] for c in result["metric_per_case"]])
    result["foreground_mean"]["NSD"] = _nanmean([result["mean"][r]["NSD"] for r in labels_or_regions])
    result["nsd_tolerance_mm"] = float(tolerance_mm)


def _write_summary(result: Dict[str, Any], output_file: str) -> None:
    """nnU-Net's summary.json (its key conversion and layout), under a temporary name, then renamed."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json

    with atomic_path(output_file, suffix=".tmp.json") as tmp:
        save_summary_json(result, tmp)


def evaluate_folder(ref_folder: str, pred_folder: str, dataset_json: dict, image_reader_writer, output_file: str,
                    num_processes: int = 1, nsd_tolerance_mm: Optional[float] = None) -> dict:
    """Score every prediction in ``pred_folder`` against the same-named reference; write and return the summary.

    The summary is nnU-Net's (``metric_per_case``, ``mean``, ``foreground_mean``), with ``"NSD"`` added
    to every class entry when ``nsd_tolerance_mm`` is given. Labels, regions and the ignore label come
    from ``dataset_json['labels']`` through nnU-Net's LabelManager, as nnU-Net's own evaluation does.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    for folder, what in ((ref_folder, "reference folder"), (pred_folder, "prediction folder")):
        if not os.path.isdir(folder):
            raise DeSAMInputError(f"{folder}: {what} does not exist")
    if nsd_tolerance_mm is not None and not nsd_tolerance_mm >= 0:
        raise DeSAMInputError(f"NSD tolerance {nsd_tolerance_mm}: give a distance in mm >= 0")
    ending = dataset_json["file_ending"]
    names = sorted(f for f in os.listdir(pred_folder)
                   if f.endswith(ending) and os.path.isfile(os.path.join(pred_folder, f)))
    if not names:
        raise DeSAMInputError(f"{pred_folder}: no predictions (*{ending}) to evaluate")
    missing = [f for f in names if not os.path.isfile(os.path.join(ref_folder, f))]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DeSAMInputError(f"{ref_folder}: reference label map missing for {shown}")
    lm = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    labels_or_regions = list(lm.foreground_regions if lm.has_regions else lm.foreground_labels)
    if not labels_or_regions:
        raise DeSAMInputError(f"dataset.json labels {dataset_json['labels']}: no foreground label to evaluate")
    result = compute_metrics_on_folder(ref_folder, pred_folder, None, image_reader_writer, ending, labels_or_regions,
                                       lm.ignore_label, num_processes=max(1, num_processes))
    if nsd_tolerance_mm is not None:
        _add_nsd(result, ref_folder, pred_folder, names, image_reader_writer, labels_or_regions, lm.ignore_label,
                 float(nsd_tolerance_mm), num_processes)
    _write_summary(result, output_file)
    return result


def _as_tuple(key: Any) -> Tuple[int, ...]:
    """1, '1', (1,), [1, 2] or '(1, 2)' -> a tuple of label values, for matching summary keys to names."""
    if isinstance(key, str):
        from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region
        key = key_to_label_or_region(key)
    if isinstance(key, (list, tuple)):
        return tuple(int(k) for k in key)
    return (int(key),)


def _fmt(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{float(value):.4f}"


def format_table(summary: dict, labels: Optional[Mapping[str, Any]] = None) -> str:
    """One row per class (name and value) with Dice, IoU and NSD if present, the foreground mean and the cases.

    ``labels`` is dataset.json's ``labels`` (name -> value or region); without it the rows show values only.
    """
    names = {_as_tuple(v): n for n, v in (labels or {}).items() if n != "ignore"}
    means = summary["mean"]
    metrics = ["Dice", "IoU"] + (["NSD"] if any("NSD" in m for m in means.values()) else [])
    header = [f"NSD@{summary['nsd_tolerance_mm']:g}mm" if m == "NSD" and "nsd_tolerance_mm" in summary else m
              for m in metrics]
    rows = []
    for key, values in means.items():
        value = _as_tuple(key)
        label = str(value[0]) if len(value) == 1 else ",".join(map(str, value))
        rows.append([names.get(value, ""), label] + [_fmt(values.get(m)) for m in metrics])
    rows.append(["mean (foreground)", ""] + [_fmt(summary["foreground_mean"].get(m)) for m in metrics])
    table = [["class", "label"] + header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    n = len(summary["metric_per_case"])
    lines.append(f"{n} case{'s' if n != 1 else ''}")
    return "\n".join(lines)
