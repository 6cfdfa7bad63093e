"""Shared fixtures: nnU-Net folders in a temp dir, synthetic datasets, the shared real data."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/synthetic.py

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HIPPOCAMPUS = SHARED / "datasets" / "Dataset004_Hippocampus"

# nnU-Net's worker processes and our commands must stay small and quiet on a 2-core machine
os.environ.setdefault("nnUNet_n_proc_DA", "1")
os.environ.setdefault("nnUNet_compile", "f")


@pytest.fixture()
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results for one test (nnU-Net 2.8.1 reads them lazily)."""
    dirs = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in dirs.items():
        v.mkdir()
        monkeypatch.setenv(k, str(v))
    return dirs


def hippocampus_subset(raw_root: Path, num_cases: int) -> Path:
    """Link the first ``num_cases`` shared hippocampus cases into a temp nnUNet_raw (skip if absent)."""
    if not HIPPOCAMPUS.is_dir():
        pytest.skip(f"{HIPPOCAMPUS} not present")
    target = raw_root / HIPPOCAMPUS.name
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    labels = sorted(os.listdir(HIPPOCAMPUS / "labelsTr"))[:num_cases]
    for f in labels:
        case = f[: -len(".nii.gz")]
        os.symlink(HIPPOCAMPUS / "labelsTr" / f, target / "labelsTr" / f)
        os.symlink(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", target / "imagesTr" / f"{case}_0000.nii.gz")
    dataset_json = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    dataset_json["numTraining"] = len(labels)
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return target
