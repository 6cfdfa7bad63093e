"""Preview PNGs: a montage of slices with the prediction (and the ground truth) outlined on the image.

Numbers say how good a segmentation is on average; looking says where it fails. The montage shows
up to ``max_slices`` slices across one axis of the array as SimpleITK reads it (z, y, x), picked
evenly among the slices that hold any foreground, with the voxel spacing honoured so anatomy keeps
its shape. Drawing uses a private ``Figure`` with the Agg canvas, never pyplot, so it changes no
global matplotlib state (backend, current figure) of the program that calls it.
"""
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from desam_nnu.atomic import atomic_path
from desam_nnu.errors import DeSAMInputError

PREDICTION_STYLE = "solid"
REFERENCE_STYLE = "dashed"


def find_label_file(image_folder: str, case: str, file_ending: str) -> Optional[str]:
    """Ground truth "alongside" the images: ``labelsTs`` next to ``imagesTs`` (any 'images' -> 'labels'),
    then a ``labels`` subfolder; the path of ``<case><file_ending>`` there, or None."""
    folder = os.path.normpath(os.path.abspath(image_folder))
    parent, name = os.path.split(folder)
    candidates = []
    if "images" in name:
        candidates.append(os.path.join(parent, name.replace("images", "labels")))
    candidates.append(os.path.join(folder, "labels"))
    for candidate in candidates:
        path = os.path.join(candidate, case + file_ending)
        if os.path.isfile(path):
            return path
    return None


def _read(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Array in SimpleITK's (z,) y, x order (first component of vector images) and the spacing in that order."""
    image = sitk.ReadImage(path)
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array[..., 0]
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    if array.ndim == 2:  # a 2D image: one slice along a unit axis
        array, spacing = array[None], (1.0,) + spacing
    return array, spacing


def _pick_slices(masks: Sequence[np.ndarray], axis: int, max_slices: int) -> List[int]:
    """Up to ``max_slices`` indices spread evenly over the slices with foreground in any mask (all if none)."""
    depth = masks[0].shape[axis]
    others = tuple(a for a in range(masks[0].ndim) if a != axis)
    has_fg = np.zeros(depth, bool)
    for m in masks:
        has_fg |= (m > 0).any(axis=others)
    candidates = np.flatnonzero(has_fg) if has_fg.any() else np.arange(depth)
    count = min(max_slices, len(candidates))
    return sorted({int(candidates[i]) for i in np.round(np.linspace(0, len(candidates) - 1, count)).astype(int)})


def _window(image: np.ndarray) -> Tuple[float, float]:
    """Grey levels from the 0.5/99.5 percentiles, so a few bright voxels do not wash the image out."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _padded_grid(shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x = column, y = row, as imshow uses) of a plane padded by one pixel."""
    return np.meshgrid(np.arange(-1, shape[1] + 1), np.arange(-1, shape[0] + 1))


def _colours(labels: Sequence[int]) -> Dict[int, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: cmap((i + 1) % 10) for i, lab in enumerate(sorted(labels))}  # skip blue-grey index 0 on grey


def write_preview(image_file: str, prediction_file: str, output_png: str, slicing_axis: int,
                  label_file: Optional[str] = None, max_slices: int = 12,
                  label_names: Optional[Mapping[int, str]] = None) -> None:
    """Write a PNG montage of slices across ``slicing_axis`` of the (z, y, x) array with outlined labels.

    The prediction is outlined solid, one colour per class; the ground truth (``label_file``) dashed in
    the same colours. ``label_names`` (value -> name) names the classes in the legend. Written whole:
    a temporary file in the target folder, then renamed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image, spacing = _read(image_file)
    prediction, _ = _read(prediction_file)
    reference = _read(label_file)[0] if label_file else None
    for path, arr in ((prediction_file, prediction), (label_file, reference)):
        if arr is not None and arr.shape != image.shape:
            raise DeSAMInputError(f"{path}: shape {arr.shape} differs from the image's {image.shape} ({image_file})")
    if not -image.ndim <= slicing_axis < image.ndim:
        raise DeSAMInputError(f"slicing axis {slicing_axis}: {image_file} has {image.ndim} axes")
    axis = slicing_axis % image.ndim
    masks = [prediction] + ([reference] if reference is not None else [])
    slices = _pick_slices(masks, axis, max(1, max_slices))
    classes = sorted(int(v) for v in set(np.unique(prediction)).union(np.unique(reference) if reference is not None
                                                                       else []) if v != 0)
    colours = _colours(classes)
    rows_axis, cols_axis = [a for a in range(image.ndim) if a != axis]
    # imshow's aspect is a pixel's height / width; z shown upwards (origin lower) when it is the row axis
    aspect = spacing[rows_axis] / spacing[cols_axis]
    origin = "lower" if rows_axis == 0 and image.ndim == 3 else "upper"
    vmin, vmax = _window(image.astype(np.float32))

    n = len(slices)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    height_px, width_px = image.shape[rows_axis] * aspect, image.shape[cols_axis]
    panel_w = 2.6
    panel_h = float(np.clip(panel_w * height_px / width_px, 0.8, 8.0)) + 0.3
    legend_h = 0.1 + 0.22 * math.ceil(len(classes) * (2 if reference is not None else 1) / 4)
    fig_h = panel_h * nrows + legend_h + 0.3
    fig = Figure(figsize=(max(panel_w * ncols, 5.2), fig_h), dpi=100)
    FigureCanvasAgg(fig)
    for k, index in enumerate(slices):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        take = [slice(None)] * image.ndim
        take[axis] = index
        ax.imshow(image[tuple(take)], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin,
                  interpolation="nearest")
        limits = ax.get_xlim(), ax.get_ylim()  # the padded outline grid must not widen the view
        for seg, style in ((prediction, PREDICTION_STYLE), (reference, REFERENCE_STYLE)):
            if seg is None:
                continue
            plane = seg[tuple(take)]
            for c in classes:
                mask = plane == c
                if mask.any():  # padded, so outlines close at the image border and thin planes still draw
                    ax.contour(*_padded_grid(mask.shape), np.pad(mask, 1).astype(np.float32), levels=[0.5],
                               colors=[colours[c]], linestyles=style, linewidths=1.2)
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_title(f"slice {index}", fontsize=9)
        ax.set_axis_off()
    handles = []
    for c in classes:
        name = (label_names or {}).get(c)
        text = f"{name} ({c})" if name else f"label {c}"
        handles.append(Line2D([], [], color=colours[c], linestyle=PREDICTION_STYLE, label=f"{text} prediction"))
        if reference is not None:
            handles.append(Line2D([], [], color=colours[c], linestyle=REFERENCE_STYLE, label=f"{text} reference"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{os.path.basename(prediction_file)}: axis {axis}", fontsize=10)
    fig.tight_layout(rect=(0, legend_h / fig_h if handles else 0, 1, 1 - 0.3 / fig_h))

    with atomic_path(output_png, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png")
