"""Shared fixtures: nnU-Net folders in a temp dir, synthetic datasets, the shared real data."""
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


def _thread_pool_for_file_lists() -> None:
    """nnU-Net's planner lists a raw dataset's files with a forked ``multiprocessing.Pool`` of 12
    (``nnunetv2.utilities.utils.create_lists_from_splitted_dataset_folder``). In this long-lived test process, after
    torch has run and other tests left threads behind, a forked child can inherit a held lock and hang forever (seen
    in CI: a planner test waiting on its deadlocked child). Listing files needs no processes: threads do it here."""
    from multiprocessing.pool import ThreadPool

    import nnunetv2.utilities.utils as nnunet_utils
    nnunet_utils.Pool = ThreadPool


_thread_pool_for_file_lists()


@pytest.fixture()
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results for one test (nnU-Net 2.8.1 reads them lazily)."""
    dirs = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in dirs.items():
        v.mkdir()
        monkeypatch.setenv(k, str(v))
    return dirs


def planned_tiny_dataset(tmp_path_factory, dataset_id: int, num_cases: int, shape_zyx, family: str = "desam"):
    """A module's synthetic dataset planned and preprocessed for the tiny backbone (64 px) and the network
    ``family``, in nnU-Net folders of its own; yields the root folder (for module-scoped fixtures)."""
    root = tmp_path_factory.mktemp(f"tiny{dataset_id}")
    mp = pytest.MonkeyPatch()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / k).mkdir()
        mp.setenv(k, str(root / k))
    mp.delenv("DESAM_SAM_CHECKPOINT", raising=False)
    from synthetic import make_dataset

    from desam_nnu.planners.plan_and_preprocess import plan_and_preprocess
    make_dataset(str(root / "nnUNet_raw"), dataset_id, num_cases=num_cases, shape_zyx=shape_zyx)
    plan_and_preprocess(dataset_id, num_processes=1, backbone="tiny", image_size=64, family=family)
    try:
        yield root
    finally:
        mp.undo()


def trained_tiny_model(tmp_path_factory, dataset_id: int, num_cases: int, shape_zyx, folds, **train_kw):
    """:func:`planned_tiny_dataset` with ``folds`` trained a few iterations; yields the root folder."""
    from desam_nnu.cli.train import train
    for root in planned_tiny_dataset(tmp_path_factory, dataset_id, num_cases, shape_zyx):
        for fold in folds:
            train(dataset_id, fold, device="cpu", epochs=1, iterations_per_epoch=3, val_iterations=1, **train_kw)
        yield root


def require_shared(path: Path, what: str) -> None:
    """Tests on ``../shared`` data skip on a machine without it, and fail in CI (``CI=true``), where
    ``../shared`` is always beside the clone: a missing fixture there is a broken setup, not a skip."""
    if path.exists():
        return
    message = f"{path}: {what} not found"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: ../shared must be beside the clone)", pytrace=False)
    pytest.skip(message)


def hippocampus_subset(raw_root: Path, num_cases: int) -> Path:
    """Link the first ``num_cases`` shared hippocampus cases into a temp nnUNet_raw (skip if absent)."""
    require_shared(HIPPOCAMPUS, "the shared hippocampus dataset")
    from desam_nnu.paths import link_dataset_subset
    return Path(link_dataset_subset(str(HIPPOCAMPUS), str(raw_root), num_cases))
