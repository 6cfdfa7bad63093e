"""desam_predict --prompts: the file's checks, and prompts carried through nnU-Net's preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import planned_tiny_dataset

from desam_nnu.config import CONFIGURATION, PLANS_NAME
from desam_nnu.inference.user_prompts import PromptsFileError, read_prompts, schema, slice_prompts, to_preprocessed
from desam_nnu.planners.plans import DeSAMPlansManager


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Dataset044 (rotated, 0.8 x 0.8 x 4 mm, a zero border that the crop removes; 5 cases, for a fold),
    planned for 64 px."""
    yield from planned_tiny_dataset(tmp_path_factory, 44, 5, (8, 40, 48))


def _preprocess(root: Path, transpose_forward, spacing_2d):
    """Case 0 through the plans' preprocessor, with the plans' transpose and 2D spacing replaced (to make the
    preprocessing transpose and resample): data, seg and nnU-Net's properties."""
    folder = root / "nnUNet_preprocessed" / "Dataset044_Synth"
    plans = json.loads((folder / f"{PLANS_NAME}.json").read_text())
    plans["transpose_forward"] = list(transpose_forward)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose_forward)]
    plans["configurations"][CONFIGURATION]["spacing"] = list(spacing_2d)
    pm = DeSAMPlansManager(plans)
    cm = pm.get_configuration(CONFIGURATION)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    raw = root / "nnUNet_raw" / "Dataset044_Synth"
    image, label = raw / "imagesTr" / "case_000_0000.nii.gz", raw / "labelsTr" / "case_000.nii.gz"
    data, seg, props = cm.preprocessor_class().run_case([str(image)], str(label), pm, cm, dataset_json)
    return image, label, data, seg[0], props, plans["transpose_forward"]


def _write(tmp_path: Path, prompts: dict) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    return str(path)


@pytest.mark.parametrize("transpose, spacing", [((0, 1, 2), (0.8, 0.8)), ((0, 2, 1), (0.5, 1.1))])
def test_world_clicks_land_on_their_voxel_after_preprocessing(planned, tmp_path, transpose, spacing):
    """A click given in world millimetres at a voxel's centre of a rotated, anisotropic image lands, after the
    transpose, the crop and the resampling, on a preprocessed voxel of the same label."""
    image, label, data, seg, props, tf = _preprocess(planned, transpose, spacing)
    ref = sitk.ReadImage(str(label))
    labels = sitk.GetArrayFromImage(ref)  # [z, y, x]
    clicks = []
    for lab in (1, 2):
        z, y, x = np.argwhere(labels == lab)[len(np.argwhere(labels == lab)) // 2]
        clicks.append((lab, ref.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])))
    path = _write(tmp_path, {"coordinates": "world", "cases": {"case_000": {
        str(lab): {"points": [{"point": list(p)}]} for lab, p in clicks}}})
    prompts = read_prompts(path, {"case_000": str(image)}, [1, 2])
    assert ref.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert any(lo > 0 for lo, _ in props["bbox_used_for_cropping"])  # the crop moved the image
    mapped = slice_prompts(prompts["case_000"], props, tf, data.shape[1:])
    for lab, _ in clicks:
        ((k, sp),) = mapped[lab].items()
        (x, y, positive), = sp.points
        assert positive == 1 and seg[k, int(round(y)), int(round(x))] == lab


@pytest.mark.parametrize("transpose, spacing", [((0, 1, 2), (0.8, 0.8)), ((0, 2, 1), (0.5, 1.1))])
def test_voxel_boxes_cover_their_structure_slice_by_slice(planned, tmp_path, transpose, spacing):
    """Each class's voxel bounding box, given as box + slice range, covers exactly the preprocessed slices that
    hold the class, and on each of them the class's pixels (to one pixel of resampling)."""
    image, label, data, seg, props, tf = _preprocess(planned, transpose, spacing)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    given = {}
    for lab in (1, 2):
        z, y, x = np.argwhere(labels == lab).T
        given[str(lab)] = {"boxes": [{"box": [int(x.min()), int(y.min()), int(x.max()), int(y.max())],
                                      "slices": [int(z.min()), int(z.max())]}]}
    prompts = read_prompts(_write(tmp_path, {"cases": {"case_000": given}}), {"case_000": str(image)}, [1, 2])
    mapped = slice_prompts(prompts["case_000"], props, tf, data.shape[1:])
    for lab in (1, 2):
        where = np.argwhere(seg == lab)  # [n, 3]: slice, row, column
        holding = sorted({int(k) for k in where[:, 0]})
        assert sorted(mapped[lab]) == holding
        for k in holding:
            (x0, y0, x1, y1), = mapped[lab][k].boxes
            rows, cols = np.nonzero(seg[k] == lab)
            assert x0 - 1 <= cols.min() and cols.max() <= x1 + 1 and y0 - 1 <= rows.min() and rows.max() <= y1 + 1
            # the structure's box over all its slices, not more: to a pixel of resampling
            assert abs(x0 - where[:, 2].min()) <= 1 and abs(x1 - where[:, 2].max()) <= 1
            assert abs(y0 - where[:, 1].min()) <= 1 and abs(y1 - where[:, 1].max()) <= 1


def test_world_boxes_become_the_voxel_box_around_their_corners(planned, tmp_path):
    """A box given in world millimetres on the rotated, anisotropic, cropped image (the world-axis box around a
    class's voxels) becomes the voxel box around its eight corners, which holds the class's voxels, and after the
    crop and resampling covers every preprocessed slice and pixel of the class."""
    image, label, data, seg, props, tf = _preprocess(planned, (0, 1, 2), (0.8, 0.8))
    ref = sitk.ReadImage(str(label))
    z, y, x = np.argwhere(sitk.GetArrayFromImage(ref) == 1).T
    corners = np.array([ref.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                        for a in (x.min(), x.max()) for b in (y.min(), y.max()) for c in (z.min(), z.max())])
    lo, hi = corners.min(0), corners.max(0)
    path = _write(tmp_path, {"coordinates": "world", "cases": {"case_000": {"1": {"boxes": [
        {"box": [lo[0], lo[1], hi[0], hi[1]], "slices": [lo[2], hi[2]]}]}}}})
    (box,) = read_prompts(path, {"case_000": str(image)}, [1, 2])["case_000"].boxes[1]
    back = np.array([ref.TransformPhysicalPointToContinuousIndex([float(a), float(b), float(c)])
                     for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    np.testing.assert_allclose(box.lo, back.min(0), atol=1e-6)
    np.testing.assert_allclose(box.hi, back.max(0), atol=1e-6)
    assert box.lo[0] <= x.min() and box.lo[1] <= y.min() and box.hi[0] >= x.max() and box.hi[1] >= y.max()
    assert box.hi[0] - box.lo[0] > x.max() - x.min()  # the rotation widens the box
    mapped = slice_prompts(read_prompts(path, {"case_000": str(image)}, [1, 2])["case_000"], props, tf,
                           data.shape[1:])
    for k in sorted({int(k) for k in np.argwhere(seg == 1)[:, 0]}):
        (x0, y0, x1, y1), = mapped[1][k].boxes
        rows, cols = np.nonzero(seg[k] == 1)
        assert x0 - 1 <= cols.min() and cols.max() <= x1 + 1 and y0 - 1 <= rows.min() and rows.max() <= y1 + 1


def test_voxel_index_maps_through_transpose_crop_and_scale():
    props = {"bbox_used_for_cropping": [[1, 9], [2, 30], [0, 20]],
             "shape_after_cropping_and_before_resampling": [8, 28, 20]}
    # (x, y, z) = (4, 10, 3) -> [z, y, x] (3, 10, 4) -> transposed (0, 2, 1): (3, 4, 10) -> crop (2, 2, 10)
    out = to_preprocessed((4, 10, 3), props, (0, 2, 1), (8, 40, 14))
    np.testing.assert_allclose(out, [2, 2.5 * 40 / 28 - 0.5, 10.5 * 14 / 20 - 0.5])


def test_every_problem_is_one_line_naming_case_and_field(planned, tmp_path):
    raw = planned / "nnUNet_raw" / "Dataset044_Synth" / "imagesTr"
    images = {c: str(raw / f"{c}_0000.nii.gz") for c in ("case_000", "case_001")}
    path = _write(tmp_path, {"cases": {
        "case_000": {"3": {"boxes": []}, "1": {"points": [{"point": [100, 5, 2]}],
                                              "boxes": [{"box": [10, 5, 2, 8], "slices": [0, 3]}]}},
        "case_009": {}}})
    with pytest.raises(PromptsFileError) as e:
        read_prompts(path, images, [1, 2])
    assert e.value.problems == [
        f"{path}: cases.case_009: no such case among the input images",
        f"{path}: cases.case_001: missing (every input case needs an entry; {{}} for none)",
        f"{path}: cases.case_000.3: the model has no class 3 (its classes: 1, 2)",
        f"{path}: cases.case_000.1.boxes[0]: corners out of order (x0 <= x1, y0 <= y1, z0 <= z1)",
        f"{path}: cases.case_000.1.points[0]: outside the image (x 0..47, y 0..39, z 0..7 voxels)"]
    bad = _write(tmp_path, {"cases": {"case_000": {"1": {"boxes": [{"box": [1, 2, 3]}]}}}, "units": "mm"})
    with pytest.raises(PromptsFileError) as e:
        read_prompts(bad, images, [1, 2])
    assert all(p.startswith(f"{bad}: ") for p in e.value.problems) and len(e.value.problems) == 3
    assert any("cases.case_000.1.boxes[0]: 'slices' is a required property" in p for p in e.value.problems)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PromptsFileError, match="broken.json: not a JSON file"):
        read_prompts(str(tmp_path / "broken.json"), images, [1, 2])
    assert schema()["required"] == ["cases"]


# ------------------------------------------------------------------ desam_predict --prompts, end to end
def _region_decoder(self, features, points=None, boxes=None, image_index=None):
    """A stand-in for DeSAM.decode: every class +10 inside each prompt's box (or within 4 input pixels of its
    positive clicks), -10 elsewhere, so that the output shows where each prompt landed."""
    h, w = self.mask_size(features)
    ys = (torch.arange(h).float() + 0.5) * self.image_size / h - 0.5  # the mask pixels' centres, input frame
    xs = (torch.arange(w).float() + 0.5) * self.image_size / w - 0.5
    masks = []
    if boxes is not None:
        for x0, y0, x1, y1 in boxes.tolist():
            masks.append(((ys >= y0 - 0.5) & (ys <= y1 + 0.5))[:, None] & ((xs >= x0 - 0.5) & (xs <= x1 + 0.5))[None])
    else:
        coords, labels = points
        for c, lab in zip(coords, labels):
            near = torch.zeros(h, w, dtype=torch.bool)
            for (x, y), positive in zip(c.tolist(), lab.tolist()):
                if positive:
                    near |= (ys[:, None] - y) ** 2 + (xs[None] - x) ** 2 <= 16
            masks.append(near)
    logits = torch.where(torch.stack(masks), 10.0, -10.0)[:, None].repeat(1, self.num_classes, 1, 1)
    return logits, torch.ones(len(masks), self.num_classes)


@pytest.fixture(scope="module")
def trained(planned):
    """A model folder for Dataset044 (two iterations; the decoder is replaced in the tests, so the final
    validation, most of a short training's time, is skipped)."""
    from desam_nnu.cli.train import train
    from desam_nnu.trainers.desam_trainer import DeSAMTrainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeSAMTrainer, "perform_actual_validation", lambda self, *a, **k: None)
        train(44, 0, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1)
    return planned


def test_predict_with_a_prompts_file_segments_what_was_prompted(trained, tmp_path, monkeypatch):
    """A voxel box for class 1 over some slices and a click for class 2: class 1 comes out as that box on
    exactly those slices (the whole chain: mapping, tiles, decoding, export to the raw geometry), class 2
    around the click's slice only, nothing anywhere else."""
    from desam_nnu.cli.predict import main
    from desam_nnu.model import DeSAM
    monkeypatch.setattr(DeSAM, "decode", _region_decoder)
    raw = trained / "nnUNet_raw" / "Dataset044_Synth" / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "case_001_0000.nii.gz").symlink_to(raw / "case_001_0000.nii.gz")
    box = {"box": [10, 12, 30, 25], "slices": [2, 4]}
    path = _write(tmp_path, {"cases": {"case_001": {"1": {"boxes": [box]},
                                                    "2": {"points": [{"point": [40, 30, 6]}]}}}})
    out = tmp_path / "out"
    assert main(["-i", str(inp), "-o", str(out), "-d", "44", "--prompts", path, "-device", "cpu", "-npp", "0",
                 "-nps", "0"]) == 0
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_001.nii.gz")))  # [z, y, x]
    z, y, x = np.nonzero(seg == 1)
    assert sorted(set(z.tolist())) == [2, 3, 4]
    assert abs(x.min() - 10) <= 1 and abs(x.max() - 30) <= 1 and abs(y.min() - 12) <= 1 and abs(y.max() - 25) <= 1
    z2, y2, x2 = np.nonzero(seg == 2)
    assert set(z2.tolist()) == {6} and abs(np.median(x2) - 40) <= 1 and abs(np.median(y2) - 30) <= 1
    assert json.loads((out / "predict_args.json").read_text())["prompts_file"] == path


def test_bad_prompts_stop_before_anything_is_written(trained, tmp_path, capsys):
    from desam_nnu.cli.predict import main
    raw = tmp_path / "in"
    raw.mkdir()
    for case in ("case_000", "case_001"):
        (raw / f"{case}_0000.nii.gz").symlink_to(trained / "nnUNet_raw" / "Dataset044_Synth" / "imagesTr" /
                                                 f"{case}_0000.nii.gz")
    path = _write(tmp_path, {"cases": {"case_000": {"5": {}}, "case_001": {"1": {"points": [{"point": [1, 2, 99]}]}}}})
    out = tmp_path / "out"
    assert main(["-i", str(raw), "-o", str(out), "-d", "44", "--prompts", path, "-device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: cases.case_000.5: the model has no class 5 (its classes: 1, 2)",
                   f"error: {path}: cases.case_001.1.points[0]: outside the image (x 0..47, y 0..39, z 0..7 voxels)"]
    assert not out.exists()
    assert main(["-i", str(raw), "-o", str(out), "-d", "44", "--prompts", path, "--top-k", "2",
                 "--coarse-grid"]) == 2
    assert "replaces the automatic prompts: drop --top-k, --coarse-grid" in capsys.readouterr().err
