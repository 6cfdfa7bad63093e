"""desam_plan_and_preprocess end to end on synthetic data, and every kind of bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import make_dataset, write_nifti

from desam_nnu.cli.plan_and_preprocess import main
from desam_nnu.config import CONFIGURATION, PLANS_NAME
from desam_nnu.planners.plans import DeSAMPlansManager
from desam_nnu.planners.preprocessor import DeSAMPreprocessor


def _outputs(nnunet_dirs, name):
    pre = nnunet_dirs["nnUNet_preprocessed"] / name
    return pre / f"{PLANS_NAME}.json", pre / f"{PLANS_NAME}_{CONFIGURATION}"


def _run(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _assert_nothing_written(nnunet_dirs, name):
    plans, data = _outputs(nnunet_dirs, name)
    assert not plans.exists() and not data.exists()
    pre = nnunet_dirs["nnUNet_preprocessed"] / name
    leftovers = [f for f in os.listdir(pre) if "staging" in f or f.endswith(".tmp")] if pre.exists() else []
    assert leftovers == []


def test_synthetic_dataset_end_to_end(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=3)
    name = os.path.basename(folder)
    assert main(["-d", "5", "-np", "1", "--backbone", "tiny", "--verify_dataset_integrity"]) == 0
    out = capsys.readouterr().out
    assert "embedding cache estimate" in out
    plans_file, data_dir = _outputs(nnunet_dirs, name)
    plans = json.loads(plans_file.read_text())
    assert list(plans["configurations"]) == [CONFIGURATION]
    # our classes resolve through our plans manager; nnU-Net's own lookup cannot find them
    cm = DeSAMPlansManager(str(plans_file)).get_configuration(CONFIGURATION)
    assert cm.preprocessor_class is DeSAMPreprocessor
    assert cm.desam.backbone == "tiny" and cm.desam.num_classes == 2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    assert PlansManager(str(plans_file)).get_configuration(CONFIGURATION).preprocessor_class is None
    # preprocessed cases load with nnU-Net's dataset class and carry the 0..255 mapping
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    ds = infer_dataset_class(str(data_dir))(str(data_dir))
    assert sorted(ds.identifiers) == ["case_000", "case_001", "case_002"]
    data, seg, _, props = ds.load_case("case_000")
    data, seg = np.asarray(data), np.asarray(seg)
    assert data.min() == 0.0 and data.max() == pytest.approx(255.0)
    assert set(np.unique(seg)) <= {0, 1, 2} and data.shape == seg.shape
    assert (nnunet_dirs["nnUNet_preprocessed"] / name / "gt_segmentations" / "case_000.nii.gz").is_file()

    # a second run reuses the fingerprint; --clean recomputes it
    fp = nnunet_dirs["nnUNet_preprocessed"] / name / "dataset_fingerprint.json"
    mtime = fp.stat().st_mtime_ns
    assert main(["-d", name, "-np", "1", "--backbone", "tiny"]) == 0
    assert "Reusing the dataset fingerprint" in capsys.readouterr().out and fp.stat().st_mtime_ns == mtime
    assert main(["-d", "5", "-np", "1", "--backbone", "tiny", "--clean"]) == 0
    assert fp.stat().st_mtime_ns != mtime


def test_unknown_dataset_lists_the_ids_that_exist(nnunet_dirs, capsys):
    make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=1)
    code, err = _run(capsys, "-d", "42")
    assert code == 2 and "'42' not found" in err and "5 (Dataset005_Synth)" in err


def test_unset_or_missing_nnunet_raw(nnunet_dirs, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw")
    code, err = _run(capsys, "-d", "5")
    assert code == 2 and "nnUNet_raw is not set" in err
    monkeypatch.setenv("nnUNet_raw", "/nonexistent/raw")
    code, err = _run(capsys, "-d", "5")
    assert code == 2 and "/nonexistent/raw: folder does not exist" in err


def test_dataset_json_missing_keys(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=1)
    path = os.path.join(folder, "dataset.json")
    dj = json.load(open(path))
    del dj["labels"], dj["file_ending"]
    json.dump(dj, open(path, "w"))
    code, err = _run(capsys, "-d", "5")
    assert code == 2 and path in err and "labels" in err and "file_ending" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))


def test_corrupt_image_is_named(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2)
    bad = os.path.join(folder, "imagesTr", "case_001_0000.nii.gz")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])  # truncated download
    code, err = _run(capsys, "-d", "5", "-np", "1")
    assert code == 2 and bad in err and "unreadable or corrupt" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))
    assert not (nnunet_dirs["nnUNet_preprocessed"] / os.path.basename(folder) / "dataset_fingerprint.json").exists()


def test_nan_voxels_are_named(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2)
    bad = os.path.join(folder, "imagesTr", "case_000_0000.nii.gz")
    img = sitk.ReadImage(bad)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 20, 20] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, bad)
    code, err = _run(capsys, "-d", "5", "-np", "1")
    assert code == 2 and bad in err and "1 NaN voxel" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))


def test_nan_voxels_are_named_when_the_fingerprint_is_reused(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2)
    name = os.path.basename(folder)
    assert main(["-d", "5", "-np", "1", "--backbone", "tiny"]) == 0
    plans_file, data_dir = _outputs(nnunet_dirs, name)
    plans_before = plans_file.read_text()
    bad = os.path.join(folder, "imagesTr", "case_001_0000.nii.gz")
    img = sitk.ReadImage(bad)
    arr = sitk.GetArrayFromImage(img)
    arr[2, 10:12, 30] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, bad)
    capsys.readouterr()
    code, err = _run(capsys, "-d", "5", "-np", "1", "--backbone", "vit_b")
    assert code == 2 and bad in err and "NaN" in err
    # the earlier, complete outputs are untouched and no staging folder is left behind
    assert plans_file.read_text() == plans_before and sorted(os.listdir(data_dir))
    assert [f for f in os.listdir(data_dir.parent) if "staging" in f] == []


def test_geometry_mismatch_with_verify(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2)
    label = os.path.join(folder, "labelsTr", "case_001.nii.gz")
    arr = sitk.GetArrayFromImage(sitk.ReadImage(label))
    write_nifti(arr, label, spacing_xyz=(0.8, 0.8, 3.0))  # image says 4.0 mm
    code, err = _run(capsys, "-d", "5", "-np", "1", "--verify_dataset_integrity")
    assert code == 2 and label in err and "geometry mismatch" in err and "spacing" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))


def test_undeclared_label_values_with_verify(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2)
    label = os.path.join(folder, "labelsTr", "case_000.nii.gz")
    img = sitk.ReadImage(label)
    arr = sitk.GetArrayFromImage(img)
    arr[0, 5, 5] = 7
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, label)
    code, err = _run(capsys, "-d", "5", "-np", "1", "--verify_dataset_integrity")
    assert code == 2 and label in err and "[7] not declared in dataset.json" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))


def test_too_many_channels(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2, num_channels=4, shape_zyx=(6, 20, 20))
    code, err = _run(capsys, "-d", "5", "-np", "1")
    assert code == 2 and "4 channels" in err and "dataset.json" in err
    _assert_nothing_written(nnunet_dirs, os.path.basename(folder))


def test_two_channel_ct_and_mr(nnunet_dirs, capsys):
    folder = make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=2, num_channels=2, shape_zyx=(6, 24, 24),
                          channel_names={"0": "CT", "1": "T2"})
    assert main(["-d", "5", "-np", "1", "--backbone", "tiny"]) == 0
    plans_file, data_dir = _outputs(nnunet_dirs, os.path.basename(folder))
    cm = DeSAMPlansManager(str(plans_file)).get_configuration(CONFIGURATION)
    assert cm.normalization_schemes == ["SAMCTNormalization", "SAMPercentileNormalization"]
    assert cm.desam.channel_to_rgb == ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))


def test_the_installed_entry_point_runs(nnunet_dirs):
    """The real console script, as a user types it: its help, and a bad id's one-line error. (The script with
    its spawned workers runs into preprocessing in the SIGTERM test; a whole run's outputs are checked in-process
    above.)"""
    exe = os.path.join(os.path.dirname(sys.executable), "desam_plan_and_preprocess")
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("usage: desam_plan_and_preprocess"), done.stderr[-2000:]
    bad = subprocess.run([exe, "-d", "99"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: dataset '99' not found")


def _processes_with_env(marker: str) -> list:
    """PIDs whose environment mentions ``marker`` (our tmp folders): the command's own workers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/environ", "rb").read():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_sigterm_during_preprocessing_stops_cleanly(nnunet_dirs):
    import signal
    import time
    make_dataset(str(nnunet_dirs["nnUNet_raw"]), 5, num_cases=6, shape_zyx=(12, 48, 48))
    exe = os.path.join(os.path.dirname(sys.executable), "desam_plan_and_preprocess")
    proc = subprocess.Popen([exe, "-d", "5", "-np", "2", "--backbone", "tiny"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pre = nnunet_dirs["nnUNet_preprocessed"] / "Dataset005_Synth"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pre.is_dir() and any("staging" in f for f in os.listdir(pre)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    assert code == 130, proc.stderr.read()[-2000:]
    assert [f for f in os.listdir(pre) if "staging" in f or f.startswith(PLANS_NAME)] == []
    time.sleep(1)
    assert _processes_with_env(str(nnunet_dirs["nnUNet_raw"])) == []  # no orphaned workers


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    from desam_nnu.planners.plan_and_preprocess import remove_stale_staging
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"DeSAMPlans_desam_2d.staging{dead.pid}").mkdir()
    (tmp_path / f"DeSAMPlans.staging{dead.pid}.json").write_text("{}")
    (tmp_path / f"DeSAMPlans_desam_2d.staging{os.getpid()}").mkdir()  # a live run: kept
    remove_stale_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"DeSAMPlans_desam_2d.staging{os.getpid()}"]
