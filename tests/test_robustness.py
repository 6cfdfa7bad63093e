"""``desam_robustness``: a DeSAM model and an nnU-Net model on the same shifted volumes, resumable, checked inputs."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import trained_tiny_model

from desam_nnu.cli.robustness import main
from desam_nnu.inference import robustness
from desam_nnu.inference.robustness_models import StudyPredictor
from desam_nnu.inference.robustness_report import WEIGHT_BASE, mean_dice

DATASET = "Dataset031_Synth"
SHIFTS = ["blur", "bias_field"]
LEVELS = [1, 5]


def _nnunet_model(root: Path) -> Path:
    """A real nnU-Net v2 2D results folder for the same dataset: nnU-Net's own planner and trainer, its network
    initialised and saved as checkpoint_final.pth (untrained: the study's plumbing is what is tested), and a
    postprocessing choice for fold 0 as nnUNetv2_find_best_configuration writes it (keep class 1's largest component)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    plan_experiments([31])
    preprocess([31], configurations=("2d",), num_processes=(1,))
    pre = root / "nnUNet_preprocessed" / DATASET
    plans = load_json(str(pre / "nnUNetPlans.json"))
    trainer = nnUNetTrainer(dict(plans, continue_training=False), "2d", 0, load_json(str(pre / "dataset.json")),
                            device=torch.device("cpu"))
    trainer.initialize()
    trainer.inference_allowed_mirroring_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[-1]
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    folder = Path(trainer.output_folder_base)
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
    (folder / "crossval_results_folds_0").mkdir()
    save_pickle(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 1}]),
                str(folder / "crossval_results_folds_0" / "postprocessing.pkl"))
    for name, src in (("plans.json", pre / "nnUNetPlans.json"), ("dataset.json", pre / "dataset.json"),
                      ("dataset_fingerprint.json", pre / "dataset_fingerprint.json")):
        shutil.copy(src, folder / name)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Both models, the raw images and labels, and one finished study of 2 cases x (clean + 2 shifts x 2 levels)."""
    for root in trained_tiny_model(tmp_path_factory, 31, 5, (6, 40, 48), [0]):
        raw = root / "nnUNet_raw" / DATASET
        models = [str(root / "nnUNet_results" / DATASET / "DeSAMTrainer__DeSAMPlans__desam_2d"),
                  str(_nnunet_model(root))]
        out = root / "study"
        labels_before = _digest(raw / "labelsTr")
        result = robustness.run_robustness(str(raw / "imagesTr"), str(raw / "labelsTr"), str(out), models,
                                           SHIFTS, LEVELS, cases=2, seed=0, device="cpu", disable_tta=True)
        yield {"root": root, "raw": raw, "models": models, "out": out, "result": result,
               "labels_before": labels_before}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_every_model_is_scored_on_every_set(study):
    result, out = study["result"], study["out"]
    assert [m["kind"] for m in result["models"].values()] == ["desam", "nnunet"]
    assert result["cases"] == ["case_000", "case_001"]
    sets = {"clean"} | {f"{s}_L{lv}" for s in SHIFTS for lv in LEVELS}
    for model in ("desam", "nnunet_2d"):
        assert set(result["dice"][model]) == sets
        for name in sets:
            per_case = result["dice"][model][name]
            assert set(per_case) == {"case_000", "case_001"}
            assert all(set(d) == {"1", "2"} and all(np.isnan(v) or 0 <= v <= 1 for v in d.values())
                       for d in per_case.values())
            assert (out / "predictions" / model / name / "case_001.nii.gz").is_file()
    on_disk = json.loads((out / "robustness.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(result["summary"]))
    png = (out / "robustness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_nnunet_predictions_get_its_chosen_postprocessing(study):
    from scipy import ndimage
    result, out = study["result"], study["out"]
    assert result["models"]["nnunet_2d"]["postprocessing"].endswith("crossval_results_folds_0/postprocessing.pkl")
    for f in sorted((out / "predictions" / "nnunet_2d").glob("*/case_*.nii.gz")):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        assert ndimage.label(seg == 1, np.ones((3, 3, 3)))[1] <= 1, f  # class 1: its largest component (26-connected)
    assert not list((out / "predictions" / "nnunet_2d").glob("*.raw"))  # the unprocessed copies are gone


def test_summary_is_the_drop_and_rood_mri_weighted_mean(study):
    result = study["result"]
    for model, shifts in result["summary"].items():
        clean = mean_dice(result["dice"][model]["clean"])
        for shift in SHIFTS:
            s = shifts[shift]
            at = {lv: mean_dice(result["dice"][model][f"{shift}_L{lv}"]) for lv in LEVELS}
            assert s["dice"]["0"] == pytest.approx(clean)
            assert s["drop"]["5"] == pytest.approx(clean - at[5])
            weights = [1.0] + [WEIGHT_BASE ** lv for lv in LEVELS]
            expected = (clean + sum(WEIGHT_BASE ** lv * at[lv] for lv in LEVELS)) / sum(weights)
            assert s["weighted"] == pytest.approx(expected)


def test_shifted_images_keep_the_grid_and_labels_are_untouched(study):
    raw, out = study["raw"], study["out"]
    original = sitk.ReadImage(str(raw / "imagesTr" / "case_000_0000.nii.gz"))
    shifted = sitk.ReadImage(str(out / "images" / "blur_L5" / "case_000_0000.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(shifted, get)(), getattr(original, get)(), atol=1e-5)
    assert not np.allclose(sitk.GetArrayFromImage(shifted), sitk.GetArrayFromImage(original))
    assert os.path.islink(out / "images" / "clean" / "case_000_0000.nii.gz")
    assert not (out / "images" / "blur_L5" / "case_002_0000.nii.gz").exists()  # --cases 2
    assert _digest(raw / "labelsTr") == study["labels_before"]
    assert not list(out.rglob("*.tmp"))  # nothing half-written left


def test_a_resumed_run_redoes_only_unfinished_sets(study, monkeypatch):
    out = study["out"]
    called = []
    # the predictions on disk stay; only the calls are counted
    monkeypatch.setattr(StudyPredictor, "predict",
                        lambda self, images, target: called.append((self.model.name, Path(target).name)))
    monkeypatch.setattr(robustness, "shift_channels", lambda *a, **k: pytest.fail("a finished set was shifted again"))
    again = robustness.run_robustness(str(study["raw"] / "imagesTr"), str(study["raw"] / "labelsTr"), str(out),
                                      study["models"], SHIFTS, LEVELS, cases=2, seed=0, device="cpu",
                                      disable_tta=True)
    assert called == [] and again["dice"] == json.loads(json.dumps(study["result"]["dice"]))
    (out / "predictions" / "nnunet_2d" / "bias_field_L5" / robustness.DONE).unlink()  # as if killed there
    robustness.run_robustness(str(study["raw"] / "imagesTr"), str(study["raw"] / "labelsTr"), str(out),
                              study["models"], SHIFTS, LEVELS, cases=2, seed=0, device="cpu", disable_tta=True)
    assert called == [("nnunet_2d", "bias_field_L5")]
    assert (out / "predictions" / "nnunet_2d" / "bias_field_L5" / robustness.DONE).is_file()


def _bad_input(study, tmp_path, capsys, **change) -> str:
    args = {"-i": str(study["raw"] / "imagesTr"), "-ref": str(study["raw"] / "labelsTr"), "-o": str(tmp_path / "o"),
            "--models": study["models"], "--shifts": ["blur"]}
    args.update(change)
    argv = [x for k, v in args.items() for x in [k, *(v if isinstance(v, list) else [v])]]
    assert main(argv + ["-device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "o" / "predictions").exists()  # stopped before any prediction
    return err


def test_bad_input_is_one_line_and_exit_2_before_predicting(study, tmp_path, capsys):
    assert "unknown shift" in _bad_input(study, tmp_path, capsys, **{"--shifts": ["fog"]})
    assert "unknown model" in _bad_input(study, tmp_path, capsys, **{"--models": [str(study["raw"])]})
    assert "unknown model" in _bad_input(study, tmp_path, capsys, **{"--models": ["777"]})
    labels = tmp_path / "labels"
    shutil.copytree(study["raw"] / "labelsTr", labels)
    moved = sitk.ReadImage(str(labels / "case_001.nii.gz"))
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(labels / "case_001.nii.gz"))
    err = _bad_input(study, tmp_path, capsys, **{"-ref": str(labels)})
    assert "case_001.nii.gz" in err and "geometry" in err
    extra = sitk.ReadImage(str(study["raw"] / "labelsTr" / "case_001.nii.gz"))
    extra[0, 0, 0] = 3
    sitk.WriteImage(extra, str(labels / "case_001.nii.gz"))
    assert "label value 3" in _bad_input(study, tmp_path, capsys, **{"-ref": str(labels)})
    images = tmp_path / "two_channels"
    images.mkdir()
    for f in (study["raw"] / "imagesTr").iterdir():
        shutil.copy(f, images / f.name)
        shutil.copy(f, images / f.name.replace("_0000", "_0001"))
    assert "unexpected channel" in _bad_input(study, tmp_path, capsys, **{"-i": str(images)})
    # the study's folder holds seed 0's volumes: another seed there would mix two studies
    assert main(["-i", str(study["raw"] / "imagesTr"), "-ref", str(study["raw"] / "labelsTr"), "-o", str(study["out"]),
                 "--models", *study["models"], "--shifts", "blur", "--seed", "1", "-device", "cpu"]) == 2
    assert "with --seed 0; use another -o" in capsys.readouterr().err
    other = tmp_path / "copy" / "DeSAMTrainer__DeSAMPlans__desam_2d"
    shutil.copytree(study["models"][0], other)
    assert main(["-i", str(study["raw"] / "imagesTr"), "-ref", str(study["raw"] / "labelsTr"), "-o", str(study["out"]),
                 "--models", str(other), "--shifts", "blur", "-device", "cpu"]) == 2
    assert "its desam predictions are of" in capsys.readouterr().err


def test_the_entry_point_runs(study, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "desam_robustness")
    done = subprocess.run([exe, "-i", str(study["raw"] / "imagesTr"), "-ref", str(study["raw"] / "labelsTr"),
                           "-o", str(tmp_path), "--models", study["models"][0], "--shifts", "nonsense"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--shifts nonsense: unknown shift" in done.stderr
