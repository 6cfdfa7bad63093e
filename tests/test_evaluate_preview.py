"""desam_evaluate (nnU-Net's metrics plus surface Dice), preview PNGs and label lookup on tiny synthetic NIfTI.

nnU-Net's evaluation runs in a spawned pool whose start costs seconds here, so the folder is
evaluated once by the real command for the module and once by nnU-Net itself for comparison.
"""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from synthetic import synthetic_case, write_nifti

from desam_nnu.cli.evaluate import main
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.evaluate import evaluate_folder, format_table, normalised_surface_dice
from desam_nnu.inference.preview import find_label_file, write_preview

SPACING_XYZ = (0.8, 0.8, 4.0)  # array (z, y, x) spacing is (4.0, 0.8, 0.8)
LABELS = {"background": 0, "structure_a": 1, "structure_b": 2}
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz",
                "name": "Tiny"}
N = 4  # cube edge in voxels
SHIFTED_NSD = 4 * (N - 1) ** 2 / (N ** 3 - (N - 2) ** 3)  # a cube and its one-voxel shift: shared surface only
SHIFTED_DICE = (N - 1) / N


def _cubes(shape=(6, 12, 14)) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[1:1 + N, 2:2 + N, 2:2 + N] = 1
    seg[1:1 + N, 6:6 + N, 7:7 + N] = 2
    return seg


def _cube(shape=(8, 10, 10), offset=(2, 3, 3)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(o, o + N) for o in offset)] = True
    return mask


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """imagesTs / labelsTs / predictions: case_000 predicted perfectly, case_001 two cubes shifted one voxel in x."""
    root = tmp_path_factory.mktemp("evaluate")
    for sub in ("imagesTs", "labelsTs", "pred"):
        (root / sub).mkdir()
    images, labels = synthetic_case((8, 24, 28), np.random.default_rng(0))
    write_nifti(images[0], str(root / "imagesTs" / "case_000_0000.nii.gz"), SPACING_XYZ)
    write_nifti(labels, str(root / "labelsTs" / "case_000.nii.gz"), SPACING_XYZ)
    write_nifti(labels, str(root / "pred" / "case_000.nii.gz"), SPACING_XYZ)
    cubes = _cubes()
    write_nifti(cubes, str(root / "labelsTs" / "case_001.nii.gz"), SPACING_XYZ)
    write_nifti(np.roll(cubes, 1, axis=2), str(root / "pred" / "case_001.nii.gz"), SPACING_XYZ)
    # what desam_predict leaves next to its predictions, as nnU-Net does
    (root / "pred" / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (root / "pred" / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    return root


@pytest.fixture(scope="module")
def evaluated(folders):
    """The real command, once: exit code, stdout and the summary.json it wrote (NSD at 0.5 mm < 0.8 mm)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["-ref", str(folders / "labelsTs"), "-pred", str(folders / "pred"), "--nsd-tolerance", "0.5"])
    summary = json.loads((folders / "pred" / "summary.json").read_text())
    return code, out.getvalue(), summary


def _case(summary: dict, name: str) -> dict:
    return next(c["metrics"] for c in summary["metric_per_case"] if c["prediction_file"].endswith(name))


# --- normalised surface Dice -------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nsd_of_a_cube_shifted_one_voxel(axis):
    spacing = (4.0, 0.8, 0.8)
    ref = _cube()
    pred = np.roll(ref, 1, axis=axis)
    s = spacing[axis]
    assert normalised_surface_dice(ref, pred, spacing, s) == 1.0
    assert normalised_surface_dice(ref, pred, spacing, 2 * s) == 1.0
    # below the smallest spacing only coinciding surface voxels count
    assert normalised_surface_dice(ref, pred, spacing, 0.79) == pytest.approx(SHIFTED_NSD)
    if axis > 0:  # along the finest axis every surface voxel is at 0 or exactly s from the other surface
        assert normalised_surface_dice(ref, pred, spacing, 0.99 * s) == pytest.approx(SHIFTED_NSD)
    assert normalised_surface_dice(ref, ref, spacing, 0.0) == 1.0


def test_nsd_empty_masks_follow_nnunet_dice():
    empty = np.zeros((4, 5, 6), bool)
    full = _cube((6, 6, 6), (1, 1, 1))
    assert np.isnan(normalised_surface_dice(empty, empty, (1, 1, 1), 1.0))
    assert normalised_surface_dice(full, np.zeros_like(full), (1, 1, 1), 5.0) == 0.0
    assert normalised_surface_dice(np.zeros_like(full), full, (1, 1, 1), 5.0) == 0.0


def test_nsd_leaves_out_the_ignore_label():
    ref = _cube((8, 10, 10), (2, 3, 3))
    pred = ref.copy()
    pred[2:6, 3:7, 7] = True  # one extra slab of voxels, all inside the ignore region
    ignore = np.zeros_like(ref)
    ignore[:, :, 7:] = True
    assert normalised_surface_dice(ref, pred, (1, 1, 1), 0.5) < 1.0
    assert normalised_surface_dice(ref, pred, (1, 1, 1), 0.5, ignore_mask=ignore) == 1.0


def test_nsd_is_monais_boundary_voxel_nsd_on_random_shapes():
    """Ours is MONAI's ``compute_surface_dice`` (Nikolov et al.; boundary voxels by erosion, Euclidean distances
    in mm), exactly. The ``surface-distance`` package weighs each boundary element by its surface area instead
    (MONAI's ``use_subvoxels=True``); ours counts boundary voxels, as nnU-Net's metrics count voxels."""
    import torch
    from monai.metrics import compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(0)
    spacing = (4.0, 0.8, 0.8)  # array (z, y, x), as hippocampus-like MRI
    for _ in range(3):
        shape, smooth = (6, 24, 28), (0.5, 2.5, 2.5)
        noise = ndimage.gaussian_filter(rng.normal(size=shape), smooth)
        ref = noise > 0  # blobs; the prediction overlaps them, not equal
        pred = noise + 0.5 * ndimage.gaussian_filter(rng.normal(size=shape), smooth) > 0
        one_hot = [torch.from_numpy(np.stack([~m, m]))[None] for m in (pred, ref)]  # [1, 2, Z, Y, X]
        for tolerance in (0.5, 0.8, 1.2, 4.0):
            theirs = float(compute_surface_dice(*one_hot, [tolerance], spacing=spacing))  # [1, 1], float32
            assert normalised_surface_dice(ref, pred, spacing, tolerance) == pytest.approx(theirs, rel=1e-6)


# --- evaluation of a folder ----------------------------------------------------------------------

def test_perfect_case_scores_one(evaluated):
    code, _, summary = evaluated
    assert code == 0
    metrics = _case(summary, "case_000.nii.gz")
    for label in ("1", "2"):
        assert metrics[label]["Dice"] == 1.0 and metrics[label]["NSD"] == 1.0


def test_shifted_case_matches_hand_computed_values(evaluated):
    _, _, summary = evaluated
    metrics = _case(summary, "case_001.nii.gz")
    for label in ("1", "2"):
        assert metrics[label]["Dice"] == pytest.approx(SHIFTED_DICE) and metrics[label]["Dice"] < 1
        assert metrics[label]["IoU"] == pytest.approx(3 / 5)
        assert metrics[label]["NSD"] == pytest.approx(SHIFTED_NSD)
        assert summary["mean"][label]["NSD"] == pytest.approx((1 + SHIFTED_NSD) / 2)
    assert summary["foreground_mean"]["NSD"] == pytest.approx((1 + SHIFTED_NSD) / 2)
    assert summary["nsd_tolerance_mm"] == 0.5


def test_summary_equals_nnunets_own_evaluation(folders, evaluated):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    _, _, summary = evaluated
    theirs = compute_metrics_on_folder(str(folders / "labelsTs"), str(folders / "pred"), None, SimpleITKIO(),
                                       ".nii.gz", [1, 2], num_processes=1)
    assert set(summary["foreground_mean"]) == set(theirs["foreground_mean"]) | {"NSD"}
    for metric, value in theirs["foreground_mean"].items():
        assert summary["foreground_mean"][metric] == pytest.approx(value)
    for label in (1, 2):
        for metric, value in theirs["mean"][label].items():
            assert summary["mean"][str(label)][metric] == pytest.approx(value)
    leftovers = [f for f in os.listdir(folders / "pred") if ".tmp" in f]
    assert leftovers == []


def test_command_prints_a_table(evaluated):
    _, out, summary = evaluated
    assert "structure_a" in out and "structure_b" in out
    assert "Dice" in out and "IoU" in out and "NSD@0.5mm" in out and "2 cases" in out
    assert f"{summary['foreground_mean']['Dice']:.4f}" in out
    # the table also reads a summary loaded back from JSON without names
    assert "mean (foreground)" in format_table(summary)


def _run(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def test_missing_reference_folder(folders, capsys, tmp_path):
    missing = tmp_path / "labelsTs"
    code, err = _run(capsys, "-ref", missing, "-pred", folders / "pred")
    assert code == 2 and err.count("\n") == 1 and str(missing) in err


def test_missing_reference_case(folders, capsys, tmp_path):
    ref = tmp_path / "labelsTs"
    ref.mkdir()
    shutil.copy(folders / "labelsTs" / "case_000.nii.gz", ref)
    code, err = _run(capsys, "-ref", ref, "-pred", folders / "pred")
    assert code == 2 and err.count("\n") == 1 and "case_001.nii.gz" in err and str(ref) in err


def test_missing_dataset_json(folders, capsys, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    code, err = _run(capsys, "-ref", folders / "labelsTs", "-pred", pred)
    assert code == 2 and err.count("\n") == 1 and str(pred / "dataset.json") in err


@pytest.mark.parametrize("where", ["nnUNet_preprocessed", "nnUNet_raw"])
def test_dataset_option_finds_dataset_json(folders, capsys, tmp_path, nnunet_dirs, where):
    """-d reads dataset.json from $nnUNet_preprocessed, else $nnUNet_raw; shown by reaching the reference check."""
    dataset = nnunet_dirs[where] / "Dataset009_Tiny"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps(DATASET_JSON))
    if where == "nnUNet_preprocessed":
        (dataset / "DeSAMPlans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(folders / "pred" / "case_001.nii.gz", pred)
    code, err = _run(capsys, "-ref", tmp_path, "-pred", pred, "-d", "9")
    assert code == 2 and "case_001.nii.gz" in err and "reference" in err
    code, err = _run(capsys, "-ref", tmp_path, "-pred", pred, "-d", "7")
    assert code == 2 and err.count("\n") == 1 and "'7'" in err


def test_empty_prediction_folder(folders, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    with pytest.raises(DeSAMInputError, match="no predictions"):
        evaluate_folder(str(folders / "labelsTs"), str(tmp_path), DATASET_JSON, SimpleITKIO(),
                        str(tmp_path / "summary.json"))
    assert not (tmp_path / "summary.json").exists()


# --- previews ------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("axis", [0, 2])
def test_preview_png(folders, tmp_path, with_labels, axis):
    from matplotlib.image import imread

    pred = tmp_path / "shifted.nii.gz"
    labels = folders / "labelsTs" / "case_000.nii.gz"
    write_nifti(np.roll(synthetic_case((8, 24, 28), np.random.default_rng(0))[1], 2, axis=2), str(pred),
                SPACING_XYZ)
    png = tmp_path / "out" / "preview.png"
    write_preview(str(folders / "imagesTs" / "case_000_0000.nii.gz"), str(pred), str(png), axis,
                  label_file=str(labels) if with_labels else None, max_slices=4)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(png.parent) == ["preview.png"]
    pixels = imread(str(png))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 1
    coloured = np.abs(rgb[:, 0] - rgb[:, 1]) + np.abs(rgb[:, 1] - rgb[:, 2]) > 0.2
    assert coloured.sum() > 50  # the outlines: the image itself is grey


def test_preview_rejects_mismatched_prediction(folders, tmp_path):
    pred = tmp_path / "small.nii.gz"
    write_nifti(np.zeros((2, 3, 4), np.uint8), str(pred), SPACING_XYZ)
    with pytest.raises(DeSAMInputError, match="shape"):
        write_preview(str(folders / "imagesTs" / "case_000_0000.nii.gz"), str(pred), str(tmp_path / "p.png"), 0)
    assert not (tmp_path / "p.png").exists()


def test_find_label_file(folders, tmp_path):
    images = folders / "imagesTs"
    assert find_label_file(str(images), "case_000", ".nii.gz") == str(folders / "labelsTs" / "case_000.nii.gz")
    assert find_label_file(str(images) + "/", "case_000", ".nii.gz") == str(folders / "labelsTs" / "case_000.nii.gz")
    assert find_label_file(str(images), "case_999", ".nii.gz") is None
    own = tmp_path / "scans"
    (own / "labels").mkdir(parents=True)
    (own / "labels" / "a.nii.gz").write_bytes(b"")
    assert find_label_file(str(own), "a", ".nii.gz") == str(own / "labels" / "a.nii.gz")
    assert find_label_file(str(tmp_path), "a", ".nii.gz") is None
