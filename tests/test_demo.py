"""The demo dataset generator (desam_nnu.demo), its command desam_demo_dataset and quickstart.sh's input checks."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import desam_nnu.demo as demo
from desam_nnu.demo import DEMO_ORIGIN, DEMO_SPACING_XYZ, make_demo_dataset
from desam_nnu.errors import DeSAMInputError

REPO = Path(__file__).resolve().parents[1]
NAME = "Dataset900_Demo"


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return Path(make_demo_dataset(str(tmp_path_factory.mktemp("raw")), log=_quiet))


def _read(path: Path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _cases(folder: Path):
    return sorted(f.name[: -len(".nii.gz")] for f in folder.iterdir())


def test_training_and_held_back_files_and_dataset_json(dataset):
    assert dataset.name == NAME
    assert _cases(dataset / "labelsTr") == [f"demo_{i:03d}" for i in range(9)]
    assert _cases(dataset / "imagesTr") == [f"demo_{i:03d}_0000" for i in range(9)]
    assert _cases(dataset / "labelsTs") == [f"demo_{i:03d}" for i in range(9, 12)]
    assert _cases(dataset / "imagesTs") == [f"demo_{i:03d}_0000" for i in range(9, 12)]
    dj = json.loads((dataset / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending", "name"} <= set(dj)
    assert dj["numTraining"] == 9 and dj["file_ending"] == ".nii.gz" and dj["name"] == "Demo"
    assert dj["labels"] == {"background": 0, "structure_a": 1, "structure_b": 2}
    assert dj["channel_names"] == {"0": "MRI"}
    assert not [p for p in dataset.parent.iterdir() if p.name != NAME]  # no temporary folder left


def test_geometry_is_anisotropic_and_oblique(dataset):
    for sub, case in (("imagesTr", "demo_000_0000"), ("labelsTr", "demo_000"), ("imagesTs", "demo_011_0000"),
                      ("labelsTs", "demo_011")):
        image, array = _read(dataset / sub / f"{case}.nii.gz")
        assert array.shape == (16, 64, 64)
        assert np.allclose(image.GetSpacing(), DEMO_SPACING_XYZ) and np.allclose(image.GetSpacing(), (0.9, 0.9, 3))
        assert np.allclose(image.GetOrigin(), DEMO_ORIGIN) and np.any(np.asarray(image.GetOrigin()) != 0)
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        assert not np.allclose(direction, np.eye(3))
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)  # a rotation
        assert np.isclose(np.linalg.det(direction), 1.0, atol=1e-6)


def test_labels_and_images_look_like_mr(dataset):
    for sub_i, sub_l in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        for case in _cases(dataset / sub_l):
            image = _read(dataset / sub_i / f"{case}_0000.nii.gz")[1]
            labels = _read(dataset / sub_l / f"{case}.nii.gz")[1]
            assert set(np.unique(labels)) == {0, 1, 2}  # both structures in every case
            per_slice = labels.any(axis=(1, 2))
            assert 0 < per_slice.sum() < len(per_slice) - 2  # slices without any structure
            assert not per_slice[:2].any() and not per_slice[-2:].any()
            assert image.dtype == np.int16 and image.min() >= 0
            tissue = np.median(image[labels == 0][image[labels == 0] > 200])
            assert np.median(image[labels == 1]) > 1.2 * tissue > 1.2 * np.median(image[labels == 2])
            assert np.count_nonzero(image[:, :3, :3]) > 0  # background is noise, not zeros


def test_structures_vary_between_cases(dataset):
    sizes, centres = [], []
    for case in _cases(dataset / "labelsTr"):
        labels = _read(dataset / "labelsTr" / f"{case}.nii.gz")[1]
        sizes.append((labels == 1).sum())
        centres.append(np.argwhere(labels == 1).mean(0))
    assert max(sizes) > 1.5 * min(sizes)
    assert np.ptp(np.asarray(centres), axis=0).max() > 5


def test_deterministic_for_a_seed(tmp_path, dataset):
    again = Path(make_demo_dataset(str(tmp_path / "a"), num_cases=3, held_back=1, log=_quiet))
    other = Path(make_demo_dataset(str(tmp_path / "b"), num_cases=3, held_back=1, seed=1, log=_quiet))
    for sub, case in (("imagesTr", "demo_001_0000"), ("labelsTr", "demo_001")):
        a, b = _read(dataset / sub / f"{case}.nii.gz")[1], _read(again / sub / f"{case}.nii.gz")[1]
        assert np.array_equal(a, b)
    assert not np.array_equal(_read(again / "imagesTr" / "demo_000_0000.nii.gz")[1],
                              _read(other / "imagesTr" / "demo_000_0000.nii.gz")[1])
    assert _cases(again / "labelsTs") == ["demo_002"]


def test_a_complete_folder_is_reused(tmp_path):
    said = []
    folder = make_demo_dataset(str(tmp_path), num_cases=2, held_back=1, log=said.append)
    stamp = {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*")}
    assert make_demo_dataset(str(tmp_path), num_cases=2, held_back=1, log=said.append) == folder
    assert "reused" in said[-1]
    assert {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*")} == stamp


def test_an_incomplete_folder_or_a_taken_id_is_an_error(tmp_path):
    folder = Path(make_demo_dataset(str(tmp_path), num_cases=2, held_back=1, log=_quiet))
    (folder / "labelsTs" / "demo_001.nii.gz").unlink()
    with pytest.raises(DeSAMInputError, match="not a complete demo dataset"):
        make_demo_dataset(str(tmp_path), num_cases=2, held_back=1, log=_quiet)
    with pytest.raises(DeSAMInputError, match="id 900 is taken"):
        make_demo_dataset(str(tmp_path), name="Other", num_cases=2, held_back=1, log=_quiet)
    for kwargs in (dict(dataset_id=1000), dict(name="a/b"), dict(num_cases=2, held_back=2)):
        with pytest.raises(DeSAMInputError):
            make_demo_dataset(str(tmp_path / "x"), log=_quiet, **kwargs)


def test_an_interrupted_write_leaves_no_half_dataset(tmp_path, monkeypatch):
    written = []
    real = demo.write_nifti

    def write_then_stop(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(args[1])
        real(*args, **kwargs)

    monkeypatch.setattr(demo, "write_nifti", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(str(tmp_path), num_cases=3, held_back=1, log=_quiet)
    assert len(written) == 3 and list(tmp_path.iterdir()) == []
    # a writer killed outright leaves its temporary folder; the next run removes it and writes the dataset
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{NAME}.tmp-{dead.pid}-abc"
    (stale / "imagesTr").mkdir(parents=True)
    monkeypatch.setattr(demo, "write_nifti", real)
    folder = make_demo_dataset(str(tmp_path), num_cases=3, held_back=1, log=_quiet)
    assert [p.name for p in tmp_path.iterdir()] == [NAME] and Path(folder).name == NAME


def test_the_installed_entry_point_writes_the_dataset(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "desam_demo_dataset")
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw")}
    done = subprocess.run([exe, "-n", "4"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / "raw" / NAME)
    dj = json.loads((tmp_path / "raw" / NAME / "dataset.json").read_text())
    assert dj["numTraining"] == 1 and len(list((tmp_path / "raw" / NAME / "imagesTs").iterdir())) == 3
    again = subprocess.run([exe, "-o", str(tmp_path / "raw"), "-n", "4"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert again.returncode == 0 and "reused" in again.stderr
    bad = subprocess.run([exe, "-d", "1000"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: dataset id 1000: use 1..999"
    unset = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    bad = subprocess.run([exe], capture_output=True, text=True, timeout=120, env=unset)
    assert bad.returncode == 2 and bad.stderr.startswith("error: nnUNet_raw is not set")


def test_quickstart_parses_and_checks_its_argument_before_any_setup(tmp_path):
    assert subprocess.run(["bash", "-n", str(REPO / "quickstart.sh")]).returncode == 0
    script = tmp_path / "quickstart.sh"  # a copy, so that a mistake could not touch the real .venv
    shutil.copy(REPO / "quickstart.sh", script)
    (tmp_path / "NotADataset").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DESAM_WORK"}
    for args, message in (([str(tmp_path / "missing")], "dataset folder not found"),
                          ([str(tmp_path / "NotADataset")], "folder name must look like DatasetXXX_Name"),
                          (["a", "b"], "too many arguments")):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NotADataset", "quickstart.sh"]  # no .venv, no work/
