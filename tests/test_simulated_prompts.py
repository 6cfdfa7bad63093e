"""Simulated users (desam_evaluate --prompts-from-labels): boxes and clicks drawn from reference labels."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from desam_nnu.cli.evaluate import main
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.simulated_prompts import count_prompts, prompts_from_labels, write_prompts

SPACING = (0.8, 1.2, 3.0)  # x, y, z in mm
SHAPE = (6, 20, 24)  # z, y, x
ENDING = ".nii.gz"


def _case_a() -> np.ndarray:
    """Class 1 on slices 1-2 and 4 (two runs; slice 1 an 18 x 6 filled rectangle, slice 4 touching the top
    edge), class 2 on slices 0-3 (touching the right and bottom edges; slice 3 a U of 40 voxels whose centroid
    lies outside it, beside a 5 x 5 square of 25 voxels that lies deeper inside its boundary)."""
    a = np.zeros(SHAPE, dtype=np.uint8)
    a[1, 4:10, 3:21] = 1
    a[2, 5:12, 6:11] = 1
    a[4, 0:4, 15:18] = 1
    a[0:3, 14:20, 18:24] = 2
    a[3, 16:18, 2:10] = 2  # the U's base
    a[3, 10:16, 2:4] = a[3, 10:16, 8:10] = 2  # its arms
    a[3, 0:5, 15:20] = 2
    return a


def _case_c() -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.uint8)
    a[5, 7:13, 0:6] = 2  # touching the left edge
    return a


CASES = {"case_a": _case_a(), "case_b": np.zeros(SHAPE, dtype=np.uint8), "case_c": _case_c()}


def _image(array: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin((-12.5, 40.0, 7.25))
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """nnU-Net's raw layout: imagesTr, labelsTr and dataset.json."""
    root = tmp_path_factory.mktemp("raw") / "Dataset051_Sim"
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir()
    for case, labels in CASES.items():
        sitk.WriteImage(_image(labels), str(root / "labelsTr" / f"{case}{ENDING}"))
        sitk.WriteImage(_image(labels.astype(np.float32) * 100), str(root / "imagesTr" / f"{case}_0000{ENDING}"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": len(CASES), "file_ending": ENDING}))
    return root


def _doc(dataset: Path, mode: str = "box-per-slice", jitter_mm: float = 0.0, seed: int = 0) -> dict:
    return prompts_from_labels(str(dataset / "labelsTr"), ENDING, [1, 2], mode, jitter_mm, seed)


def _bounds(mask2d: np.ndarray) -> list:
    rows, cols = np.nonzero(mask2d)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def test_box_per_slice_is_the_class_bounds_on_each_slice(dataset):
    doc = _doc(dataset)
    assert doc["coordinates"] == "voxel" and sorted(doc["cases"]) == ["case_a", "case_b", "case_c"]
    assert doc["cases"]["case_b"] == {} and sorted(doc["cases"]["case_c"]) == ["2"]
    for case, labels in CASES.items():
        for lab in (1, 2):
            expected = [{"box": _bounds(labels[z] == lab), "slices": [z, z]}
                        for z in range(SHAPE[0]) if (labels[z] == lab).any()]
            assert doc["cases"][case].get(str(lab), {"boxes": []}) == {"boxes": expected}
    assert doc["cases"]["case_a"]["1"]["boxes"][0] == {"box": [3, 4, 20, 9], "slices": [1, 1]}
    assert count_prompts(doc) == {1: 3, 2: 5}


def test_jitter_moves_each_side_outward_within_its_spacing(dataset, tmp_path):
    exact = _doc(dataset)
    most = (math.ceil(5 / SPACING[0]), math.ceil(5 / SPACING[1]))  # 7 voxels along x, 5 along y
    moves, on_edge = [], 0
    for seed in range(4):
        doc = _doc(dataset, jitter_mm=5.0, seed=seed)
        for case, classes in exact["cases"].items():
            for lab, given in classes.items():
                for e, j in zip(given["boxes"], doc["cases"][case][lab]["boxes"], strict=True):
                    assert j["slices"] == e["slices"]  # the slice range is not jittered
                    (x0, y0, x1, y1), (jx0, jy0, jx1, jy1) = e["box"], j["box"]
                    move = [x0 - jx0, y0 - jy0, jx1 - x1, jy1 - y1]
                    assert all(0 <= m <= most[i % 2] for i, m in enumerate(move)), (case, lab, e, j)
                    assert 0 <= jx0 and 0 <= jy0 and jx1 <= SHAPE[2] - 1 and jy1 <= SHAPE[1] - 1
                    on_edge += (x1 == SHAPE[2] - 1) + (y1 == SHAPE[1] - 1) + (x0 == 0) + (y0 == 0)
                    moves.append(move)
    moves = np.array(moves)
    assert on_edge == 4 * 9 and (moves > 0).mean() > 0.5
    assert moves[:, 0::2].max() > most[1]  # x sides in x voxels (0.8 mm): beyond y's 5 voxels
    doc = _doc(dataset, jitter_mm=5.0, seed=0)
    # case_a class 2 touches the right and bottom edges: those sides stay on the edge
    assert all(b["box"][2:] == [23, 19] for b in doc["cases"]["case_a"]["2"]["boxes"][:3])
    one, again, other = tmp_path / "one.json", tmp_path / "again.json", tmp_path / "other.json"
    write_prompts(doc, str(one))
    write_prompts(_doc(dataset, jitter_mm=5.0, seed=0), str(again))
    write_prompts(_doc(dataset, jitter_mm=5.0, seed=1), str(other))
    assert one.read_bytes() == again.read_bytes() != other.read_bytes()
    assert '"slices": [0, 0]' in one.read_text()  # a list of numbers on one line, for people who read the file
    assert json.loads(one.read_text()) == doc and sorted(p.name for p in tmp_path.iterdir()) == [
        "again.json", "one.json", "other.json"]  # no temporary files left


def test_box_per_range_is_one_union_box_per_run(dataset):
    doc = _doc(dataset, "box-per-range")
    a = CASES["case_a"]
    assert doc["cases"]["case_a"]["1"]["boxes"] == [
        {"box": _bounds((a[1:3] == 1).any(0)), "slices": [1, 2]}, {"box": _bounds(a[4] == 1), "slices": [4, 4]}]
    assert doc["cases"]["case_a"]["1"]["boxes"][0]["box"] == [3, 4, 20, 11]
    assert doc["cases"]["case_a"]["2"]["boxes"] == [{"box": [2, 0, 23, 19], "slices": [0, 3]}]
    assert doc["cases"]["case_c"] == {"2": {"boxes": [{"box": [0, 7, 5, 12], "slices": [5, 5]}]}}
    assert doc["cases"]["case_b"] == {}


def test_click_is_inside_the_largest_component_at_its_centre(dataset):
    doc = _doc(dataset, "click", jitter_mm=5.0)  # the jitter is for boxes only
    for case, labels in CASES.items():
        for lab in (1, 2):
            points = doc["cases"][case].get(str(lab), {"points": []})["points"]
            assert [p["point"][2] for p in points] == [z for z in range(SHAPE[0]) if (labels[z] == lab).any()]
            for p in points:
                x, y, z = p["point"]
                assert p["positive"] is True and labels[z, y, x] == lab, (case, lab, p)
    x, y, _ = doc["cases"]["case_a"]["1"]["points"][0]["point"]  # the 18 x 6 rectangle, rows 4-9, columns 3-20
    assert abs(x - 11.5) <= 1 and abs(y - 6.5) <= 1
    u = doc["cases"]["case_a"]["2"]["points"][3]["point"]  # on the U (the largest component), not the square
    assert u[2] == 3 and u[0] <= 9 and u[1] >= 10
    x, y, _ = doc["cases"]["case_c"]["2"]["points"][0]["point"]  # the 6 x 6 square on the image's left edge
    assert abs(x - 2.5) <= 1 and abs(y - 9.5) <= 1


def test_written_files_pass_the_prompts_reader(dataset, tmp_path):
    from desam_nnu.inference.user_prompts import read_prompts

    images = {case: str(dataset / "imagesTr" / f"{case}_0000{ENDING}") for case in CASES}
    for mode in ("box-per-slice", "box-per-range", "click"):
        doc = _doc(dataset, mode, jitter_mm=20.0, seed=7)
        path = tmp_path / f"{mode}.json"
        write_prompts(doc, str(path))
        read = read_prompts(str(path), images, [1, 2])
        assert sorted(read) == sorted(CASES)
        kind = "points" if mode == "click" else "boxes"
        for case, classes in doc["cases"].items():
            got = read[case].points if mode == "click" else read[case].boxes
            assert {lab: len(v) for lab, v in got.items()} == {int(lab): len(g[kind]) for lab, g in classes.items()}
    box = read_prompts(str(tmp_path / "box-per-range.json"), images, [1, 2])["case_a"].boxes[1][1]
    assert box.lo[2] == 4 and box.hi[2] == 4


def test_cli_writes_the_file(dataset, tmp_path, capsys):
    out = tmp_path / "sub" / "prompts.json"
    argv = ["-ref", str(dataset / "labelsTr"), "--prompts-from-labels", str(out), "--prompt-mode",
            "box-per-range", "--jitter-mm", "5", "--seed", "3"]
    assert main(argv) == 0
    assert json.loads(out.read_text()) == _doc(dataset, "box-per-range", 5.0, 3)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "3 cases" in printed[0] and "liver 2, tumour 2" in printed[0]


def test_cli_input_errors_are_one_line(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    out = str(tmp_path / "p.json")
    cases = [
        (["-ref", str(tmp_path / "nowhere"), "--prompts-from-labels", out], "nowhere: reference folder does not"),
        (["-ref", str(dataset / "labelsTr")], "-pred is required"),
        (["-ref", str(dataset / "labelsTr"), "-pred", str(tmp_path), "--prompts-from-labels", out], "-pred: nothing"),
        (["-ref", str(tmp_path), "--prompts-from-labels", out], "dataset.json: not found; give the dataset with -d"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "p.json").exists()
    monkeypatch.setenv("nnUNet_raw", str(dataset.parent))  # -d finds dataset.json in $nnUNet_raw
    assert main(["-ref", str(dataset / "labelsTr"), "-d", "51", "--prompts-from-labels", out]) == 0


def test_bad_label_folders(tmp_path):
    with pytest.raises(DeSAMInputError, match="nowhere: reference folder does not exist"):
        prompts_from_labels(str(tmp_path / "nowhere"), ENDING, [1])
    with pytest.raises(DeSAMInputError, match=r"no label files \(\*\.nii\.gz\)"):
        prompts_from_labels(str(tmp_path), ENDING, [1])
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DeSAMInputError, match="broken.nii.gz: cannot read the label map") as e:
        prompts_from_labels(str(tmp_path), ENDING, [1])
    assert "\n" not in str(e.value)
    with pytest.raises(DeSAMInputError, match="must be 0 or more"):
        prompts_from_labels(str(tmp_path), ENDING, [1], jitter_mm=-1)
