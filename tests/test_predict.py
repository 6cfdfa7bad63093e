"""desam_predict / DeSAMPredictor: train(tiny) -> predict whole volumes, on synthetic NIfTI with real geometry."""
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fake_decoders import fixed_grid
from conftest import trained_tiny_model
from synthetic import ROTATED, synthetic_case, write_nifti

from desam_nnu.cli.predict import main
from desam_nnu.frozen_encoder import MARKER, expand_weights
from desam_nnu.inference.predictor import DeSAMPredictor
from desam_nnu.model import DeSAM

RESULT = "DeSAMTrainer__DeSAMPlans__desam_2d"
SPACING = (0.8, 0.8, 4.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset007 (tiny backbone, 64 px input), folds 0 and 1 trained a few iterations."""
    yield from trained_tiny_model(tmp_path_factory, 7, 5, (8, 40, 48), (0, 1))


def _model(root: Path) -> Path:
    return root / "nnUNet_results" / "Dataset007_Synth" / RESULT


def _write_case(folder: Path, case: str, shape_zyx=(9, 44, 52), seed: int = 3, blank: bool = False,
                labels_folder: Path = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_case(shape_zyx, np.random.default_rng(seed))
    path = folder / f"{case}_0000.nii.gz"
    write_nifti(np.zeros_like(images[0]) if blank else images[0], str(path), SPACING, origin=(3.0, -7.5, 12.25))
    if labels_folder is not None:
        labels_folder.mkdir(parents=True, exist_ok=True)
        write_nifti(labels, str(labels_folder / f"{case}.nii.gz"), SPACING, origin=(3.0, -7.5, 12.25))
    return path


def _predictor(root: Path, folds=(0,), **kw) -> DeSAMPredictor:
    p = DeSAMPredictor(device=torch.device("cpu"), allow_tqdm=False, **kw)
    p.initialize_from_trained_model_folder(str(_model(root)), list(folds), "checkpoint_final.pth")
    return p


def test_output_keeps_the_input_geometry_exactly(trained, tmp_path, capsys):
    """A rotated, anisotropic volume of another shape than the training cases: affine, shape, spacing equal."""
    src = _write_case(tmp_path / "imagesTs", "new_case", labels_folder=tmp_path / "labelsTs")
    out = tmp_path / "out"
    # the user's own usage: no -d, $nnUNet_results holds one DeSAM model
    assert main(["-i", str(tmp_path / "imagesTs"), "-o", str(out), "--disable-tta", "--preview", "-npp", "0",
                 "-nps", "0"]) == 0
    pred = out / "new_case.nii.gz"
    a, b = nib.load(str(src)), nib.load(str(pred))
    assert np.array_equal(a.affine, b.affine) and a.shape == b.shape == (52, 44, 9)
    assert a.header.get_zooms() == b.header.get_zooms()
    i, o = sitk.ReadImage(str(src)), sitk.ReadImage(str(pred))
    assert i.GetDirection() == o.GetDirection() and i.GetOrigin() == o.GetOrigin()
    assert np.allclose(o.GetDirection(), ROTATED, atol=1e-6)  # really rotated (NIfTI stores float32)
    assert set(np.unique(sitk.GetArrayFromImage(o))) <= {0, 1, 2}
    for f in ("plans.json", "dataset.json", "predict_args.json"):
        assert (out / f).is_file()
    assert json.loads((out / "predict_args.json").read_text())["prompt_mode"] == "grid"
    png = out / "previews" / "new_case.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1 case(s) written" in capsys.readouterr().out


def test_slices_larger_than_the_patch_are_tiled(trained, tmp_path):
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    _write_case(tmp_path / "in", "big", shape_zyx=(3, 150, 170))
    p = _predictor(trained, use_mirroring=False)
    patch = p.configuration_manager.patch_size
    report = p.predict_folder(str(tmp_path / "in"), str(tmp_path / "out"), num_processes_preprocessing=0,
                              num_processes_export=0)
    assert report.written == ["big"] and not report.failures
    # slices are cut across z (4 mm); resampled to the planned in-plane spacing they exceed the patch
    data, _, props = p.configuration_manager.preprocessor_class().run_case(
        [str(tmp_path / "in" / "big_0000.nii.gz")], None, p.plans_manager, p.configuration_manager, p.dataset_json)
    steps = compute_steps_for_sliding_window(data.shape[2:], patch, 0.5)
    tiles_per_slice = len(steps[0]) * len(steps[1])
    assert tiles_per_slice > 1
    assert p.network.tile_calls == data.shape[1] * tiles_per_slice
    assert sitk.ReadImage(str(tmp_path / "out" / "big.nii.gz")).GetSize() == (170, 150, 3)


def test_mirroring_runs_every_flip_and_makes_the_prediction_flip_equivariant(trained, tmp_path):
    """Averaged over all four in-plane flips, predicting a mirrored slice gives the mirrored prediction; without
    mirroring the (tiny, briefly trained) network alone does not."""
    _write_case(tmp_path / "in", "c", shape_zyx=(2, 40, 48))
    logits = {}
    for mirroring in (True, False):
        p = _predictor(trained, use_mirroring=mirroring, prompt_overrides={"iou_threshold": 0.0})
        data = p.configuration_manager.preprocessor_class().run_case(
            [str(tmp_path / "in" / "c_0000.nii.gz")], None, p.plans_manager, p.configuration_manager,
            p.dataset_json)[0]
        for axis in (None, -1, -2):  # as is, mirrored along x, mirrored along y: [C, Z, Y, X]
            x = torch.from_numpy(data if axis is None else np.flip(data, axis).copy())
            out = p.predict_logits_from_preprocessed_data(x).float()  # [classes, Z, Y, X]
            logits[mirroring, axis] = out if axis is None else torch.flip(out, (axis,))
        if mirroring:
            assert p.network.tile_calls == 2 * 4 * 3  # per slice: the tile, flipped along y, x, and both; 3 inputs
    for axis in (-1, -2):
        assert torch.allclose(logits[True, axis], logits[True, None], atol=2e-3)
        assert not torch.allclose(logits[False, axis], logits[False, None], atol=1e-2)


_sure_of_class_one = fixed_grid(0.9)  # a network sure that everything is class 1
_keeps_no_prompt = fixed_grid(0.01, (-13.8, -13.8))  # predicted IoUs all below the threshold (briefly trained)


def test_grid_mode_warns_when_it_kept_no_prompt_in_a_whole_case(trained, tmp_path, monkeypatch, capsys):
    for case in ("a", "b"):
        _write_case(tmp_path / "in", case, shape_zyx=(2, 40, 48))
    args = ["-i", str(tmp_path / "in"), "-d", "7", "-f", "0", "--disable-tta", "-npp", "0", "-nps", "0"]
    monkeypatch.setattr(DeSAM, "grid_candidates", _keeps_no_prompt)
    assert main(args + ["-o", str(tmp_path / "out1")]) == 0  # a warning, not a failure: the outputs are written
    err = capsys.readouterr().err
    assert "warning: grid mode kept no prompt on any slice of 2 case(s) (a, b)" in err and "--prompt-mode box" in err
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out1" / "a.nii.gz"))).any()
    monkeypatch.setattr(DeSAM, "grid_candidates", _sure_of_class_one)
    assert main(args + ["-o", str(tmp_path / "out2")]) == 0
    assert "kept no prompt" not in capsys.readouterr().err
    # box mode decodes without a threshold: nothing to warn about
    monkeypatch.setattr(DeSAM, "grid_candidates", _keeps_no_prompt)
    assert main(args + ["-o", str(tmp_path / "out3"), "--prompt-mode", "box"]) == 0
    assert "kept no prompt" not in capsys.readouterr().err


def test_blank_volume_is_all_background(trained, tmp_path, monkeypatch):
    _write_case(tmp_path / "in", "blank", blank=True)
    _write_case(tmp_path / "in", "normal")
    monkeypatch.setattr(DeSAM, "grid_candidates", _sure_of_class_one)
    p = _predictor(trained, use_mirroring=False)
    report = p.predict_folder(str(tmp_path / "in"), str(tmp_path / "out"), num_processes_preprocessing=0,
                              num_processes_export=0)
    assert sorted(report.written) == ["blank", "normal"]
    blank = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "blank.nii.gz")))
    normal = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "normal.nii.gz")))
    assert blank.shape == normal.shape == (9, 44, 52)
    assert not blank.any()  # the same network, but a blank slice holds nothing to segment
    assert (normal == 1).mean() > 0.9


def test_probabilities_folds_and_the_desam_rule(trained, tmp_path):
    """--save-probabilities as nnU-Net; two folds average their probabilities; labels follow DeSAM's 0.5 rule."""
    _write_case(tmp_path / "in", "c", shape_zyx=(4, 40, 48))
    data, _, props = None, None, None
    outputs, encoded = [], []
    for folds in ((0,), (1,), (0, 1)):
        p = _predictor(trained, folds=folds, use_mirroring=False, prompt_overrides={"iou_threshold": 0.0})
        data, _, props = p.configuration_manager.preprocessor_class().run_case(
            [str(tmp_path / "in" / "c_0000.nii.gz")], None, p.plans_manager, p.configuration_manager, p.dataset_json)
        outputs.append(p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float())
        encoded.append(p.network.tile_calls)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-2)  # the folds were trained apart and differ
    assert torch.allclose(outputs[2], (outputs[0] + outputs[1]) / 2, atol=2e-3)  # fp16 accumulation, as nnU-Net
    # the folds froze the same encoder: the ensemble holds it once and encodes each tile once, not once a fold
    assert len(p.network.ensemble) == 2 and p.network.ensemble[1].image_encoder is p.network.desam.image_encoder
    assert encoded[2] == encoded[0] > 0
    assert torch.allclose(outputs[2][0], torch.tensor(0.5), atol=2e-3)  # the constant background channel
    out = tmp_path / "out"
    report = p.predict_folder(str(tmp_path / "in"), str(out), save_probabilities=True, num_processes_preprocessing=0,
                              num_processes_export=0)
    assert report.written == ["c"]
    probs = np.load(out / "c.npz")["probabilities"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nii.gz")))
    assert probs.shape == (3, *seg.shape) and (out / "c.pkl").is_file()
    assert np.allclose(probs[0], 1 - probs[1:].max(0), atol=1e-6)
    expected = np.where(probs[1:].max(0) > 0.5, probs[1:].argmax(0) + 1, 0)
    assert (expected == seg).mean() > 0.999  # ties at exactly 0.5 aside


def test_bad_cases_fail_alone_and_the_rest_finish(trained, tmp_path, capsys):
    inp = tmp_path / "in"
    _write_case(inp, "good")
    _write_case(inp, "extra")
    shutil.copy(inp / "extra_0000.nii.gz", inp / "extra_0001.nii.gz")  # wrong number of channels
    _write_case(inp, "nochannel0")
    os.rename(inp / "nochannel0_0000.nii.gz", inp / "nochannel0_0001.nii.gz")  # missing channel file
    (inp / "garbage_0000.nii.gz").write_bytes(b"not an image at all")  # unreadable
    write_nifti(np.ones((30, 30), np.float32), str(inp / "flat_0000.nii.gz"), SPACING[:2], origin=(0, 0),
                direction=(1, 0, 0, 1))  # a 2D image for a 3D model
    out = tmp_path / "out"
    code = main(["-i", str(inp), "-o", str(out), "-d", "7", "--disable-tta", "-npp", "1", "-nps", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "4 case(s) failed" in err
    assert f"{inp / 'extra_0001.nii.gz'}: unexpected channel" in err
    assert f"{inp / 'nochannel0_0000.nii.gz'}: missing" in err
    assert f"{inp / 'garbage_0000.nii.gz'}: unreadable" in err
    assert f"{inp / 'flat_0000.nii.gz'}: a 2D image" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good.nii.gz"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_continue_prediction_skips_finished_cases_and_cleans_killed_leftovers(trained, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        _write_case(inp, f"c{i}", shape_zyx=(2, 40, 48), seed=i)
    args = ["-i", str(inp), "-o", str(out), "-d", "7", "--disable-tta", "-npp", "0", "-nps", "0"]
    assert main(args) == 0
    first = out / "c0.nii.gz"
    stamp = first.stat().st_mtime_ns
    (out / "c1.nii.gz").unlink()
    stale = out / ".c1.partial-999999.nii.gz"  # what a killed run's export leaves
    stale.write_bytes(b"\x1f\x8b truncated")
    assert main(args + ["--continue-prediction"]) == 0
    assert first.stat().st_mtime_ns == stamp and (out / "c1.nii.gz").is_file() and not stale.exists()
    assert sitk.ReadImage(str(out / "c1.nii.gz")).GetSize() == (48, 40, 2)


def test_box_mode_runs_one_box_per_tile(trained, tmp_path):
    _write_case(tmp_path / "in", "c", shape_zyx=(2, 40, 48))
    p = _predictor(trained, use_mirroring=False, prompt_overrides={"mode": "box"})
    assert p.network.prompts.mode == "box"
    report = p.predict_folder(str(tmp_path / "in"), str(tmp_path / "out"), num_processes_preprocessing=0,
                              num_processes_export=0)
    assert report.written == ["c"] and p.network.tile_calls == 2


@pytest.mark.parametrize("args, message", [
    (["-d", "7"], "no .nii.gz images"),
    (["-d", "7", "-f", "3"], "checkpoint missing"),
    (["-d", "7", "-chk", "checkpoint_nope.pth"], "no fold folder holds checkpoint_nope.pth"),
    (["-d", "9"], "dataset '9' not found"),
])
def test_model_and_folder_errors_are_one_line(trained, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    assert main(["-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out")] + args) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_without_d_several_models_are_listed(trained, tmp_path, capsys):
    copy = trained / "nnUNet_results" / "Dataset007_Synth" / "OtherTrainer__DeSAMPlans__desam_2d"
    shutil.copytree(_model(trained), copy)
    try:
        assert main(["-i", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "2 trained DeSAM models" in err and "OtherTrainer" in err and "-d" in err
    finally:
        shutil.rmtree(copy)


def test_a_model_folder_without_checkpoints_is_refused(trained, tmp_path, capsys):
    model = tmp_path / "copied_model"
    shutil.copytree(_model(trained), model, ignore=shutil.ignore_patterns("*.pth"))
    _write_case(tmp_path / "in", "c", shape_zyx=(2, 40, 48))
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(model) in err and "checkpoint_final.pth" in err
    assert not (tmp_path / "out").exists()


def test_parts_are_disjoint_complete_and_predict_as_one_run(trained, tmp_path, capsys):
    """-num_parts 3 -part_id I, one after the other into one folder: the same files as one run, each case once;
    a part leaves other parts' temporary files alone (their process ids may belong to other machines)."""
    inp = tmp_path / "in"
    for i in range(5):
        _write_case(inp, f"c{i}", shape_zyx=(2, 40, 48), seed=i)
    (inp / "c5_0000.nii.gz").write_bytes(b"\x1f\x8b truncated")
    common = ["-i", str(inp), "-d", "7", "-f", "0", "--disable-tta", "-npp", "0", "-nps", "0"]
    assert main(common + ["-o", str(tmp_path / "whole")]) == 1  # c5 fails alone
    out = tmp_path / "parts"
    out.mkdir()
    foreign = out / ".c0.partial-999999.nii.gz"  # part 0's case, written from another machine
    foreign.write_bytes(b"in progress")
    from desam_nnu.cli.predict import predict
    reports = []
    for part in (1, 2, 0):
        assert foreign.exists()  # parts 1 and 2 leave it alone
        reports.append(predict(str(inp), str(out), dataset=7, folds=["0"], disable_tta=True, npp=0, nps=0,
                               num_parts=3, part_id=part))
    assert not foreign.exists()  # part 0 removed its own case's dead leftover
    assert [sorted(r.written) for r in reports] == [["c1", "c4"], ["c2"], ["c0", "c3"]]
    assert list(reports[1].failures) == ["c5"] and not reports[0].failures and not reports[2].failures
    for i in range(5):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "whole" / f"c{i}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"c{i}.nii.gz")))
        assert np.array_equal(a, b), f"c{i}"
    capsys.readouterr()
    assert main(common + ["-o", str(out), "-num_parts", "2", "-part_id", "2"]) == 2
    assert "-part_id 2" in capsys.readouterr().err.strip().splitlines()[-1]


def test_folds_with_trained_encoders_predict_one_after_the_other(trained, tmp_path):
    """--train-encoder folds differ in their encoders: nnU-Net's loop (weights loaded per fold), same mean."""
    model = tmp_path / "model"
    shutil.copytree(_model(trained), model)
    path = model / "fold_1" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    key = "image_encoder.patch_embed.proj.weight"
    full = expand_weights(checkpoint["network_weights"], str(model), str(path))
    checkpoint["network_weights"][key] = full[key] * 1.5  # a trained tensor: a slim checkpoint keeps it
    torch.save(checkpoint, path)
    _write_case(tmp_path / "in", "c", shape_zyx=(2, 40, 48))
    outputs = []
    for folds in ((0,), (1,), (0, 1)):
        p = DeSAMPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False,
                           prompt_overrides={"mode": "box"})
        p.initialize_from_trained_model_folder(str(model), list(folds), "checkpoint_final.pth")
        data, _, _ = p.configuration_manager.preprocessor_class().run_case(
            [str(tmp_path / "in" / "c_0000.nii.gz")], None, p.plans_manager, p.configuration_manager, p.dataset_json)
        outputs.append(p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float())
    assert not len(p.network.ensemble) and p.network.tile_calls == 2 * 2  # 2 slices, encoded once per fold
    assert p.network.fast_encoder is None  # an ONNX export would keep fold 0's encoder for fold 1
    assert torch.allclose(outputs[2], (outputs[0] + outputs[1]) / 2, atol=2e-3)


def test_grid_statistics_come_back_per_case_not_as_counters_on_the_module():
    from desam_nnu.inference.prompted import TileNetwork

    class KeepsOnBrightTiles(TileNetwork):
        """Keeps a prompt on tiles whose mean exceeds 0.5, none elsewhere."""

        def _probabilities(self, tiles):
            for t in tiles:
                self._count_grid(torch.full((2, 1), bool(t.mean() > 0.5)))
            return torch.zeros(len(tiles), 1, *tiles.shape[-2:])

    net = KeepsOnBrightTiles(1)
    dark, bright = torch.rand(3, 1, 4, 4) * 0.1, 0.9 + torch.rand(2, 1, 4, 4) * 0.1
    with net.collecting() as first:
        net(dark)
    with net.collecting() as second:
        net(dark)
        net(bright)
    net(bright)  # outside a case: counted nowhere
    assert (first.tiles, first.empty, first.kept_no_prompt) == (3, 3, True)
    assert (second.tiles, second.empty, second.kept_no_prompt) == (5, 3, False)


def _box_logits(model: Path, case: Path) -> torch.Tensor:
    p = DeSAMPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False,
                       prompt_overrides={"mode": "box"})
    p.initialize_from_trained_model_folder(str(model), [0, 1], "checkpoint_final.pth")
    data, _, _ = p.configuration_manager.preprocessor_class().run_case(
        [str(case)], None, p.plans_manager, p.configuration_manager, p.dataset_json)
    return p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()


def test_the_frozen_encoder_is_held_once_and_full_checkpoints_still_load(trained, tmp_path, capsys):
    """Both folds' checkpoints leave the frozen encoder out (the model folder holds it once); a folder of full
    checkpoints (as desam_train wrote them before) predicts the same; a copied folder without the encoder file, or
    with another, is refused in one line naming it, before anything is written."""
    model = tmp_path / "model"
    shutil.copytree(_model(trained), model)
    (frozen,) = model.glob("frozen_encoder_*.pth")
    encoder_keys = [k for k in torch.load(frozen, weights_only=True)["tensors"] if k.startswith("image_encoder.")]
    assert encoder_keys
    for fold in ("fold_0", "fold_1"):
        for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
            weights = torch.load(model / fold / name, weights_only=False)["network_weights"]
            assert MARKER in weights and not any(k.startswith("image_encoder.") for k in weights), (fold, name)
    case = _write_case(tmp_path / "in", "c", shape_zyx=(2, 40, 48))
    slim = _box_logits(model, case)
    old = tmp_path / "old"
    shutil.copytree(model, old)
    for fold in ("fold_0", "fold_1"):
        path = old / fold / "checkpoint_final.pth"
        checkpoint = torch.load(path, weights_only=False)
        checkpoint["network_weights"] = expand_weights(checkpoint["network_weights"], str(old), str(path))
        assert set(encoder_keys) <= checkpoint["network_weights"].keys()
        torch.save(checkpoint, path)
    (old / frozen.name).unlink()
    assert torch.equal(_box_logits(old, case), slim)
    # a different encoder under the same name, then none
    other = torch.load(frozen, weights_only=True)
    other["tensors"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["tensors"].items()}
    torch.save(other, frozen)
    for expected in ("not the frozen image encoder", "missing: copy the whole model folder"):
        assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert str(frozen) in err and expected in err, err
        assert not (tmp_path / "out").exists()
        frozen.unlink(missing_ok=True)
