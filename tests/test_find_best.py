"""desam_find_best_configuration: the sweep over stored validation candidates, the written choice, and
desam_predict following it; on synthetic NIfTI with the tiny backbone (two folds, mixed prompts)."""
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from conftest import trained_tiny_model
from synthetic import synthetic_case, write_nifti

from desam_nnu.cli.find_best_configuration import find_best
from desam_nnu.cli.find_best_configuration import main as find_best_main
from desam_nnu.cli.predict import main as predict_main
from desam_nnu.config import PromptDefaults
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference import candidates
from desam_nnu.inference.configuration import FILE, plans_sha256, read_configuration, trained_predict_modes
from desam_nnu.inference.find_best import find_best_configuration

RESULT = "DeSAMTrainer__DeSAMPlans__desam_2d"
FOLDS = (0, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset008 (tiny backbone, 64 px), folds 0 and 1 trained briefly with mixed prompts (grid and box)."""
    yield from trained_tiny_model(tmp_path_factory, 8, 6, (6, 40, 48), FOLDS, prompt_mode="mixed")


def _model(root: Path) -> Path:
    return root / "nnUNet_results" / "Dataset008_Synth" / RESULT


def _plan_prompts(model: Path) -> PromptDefaults:
    plans = json.loads((model / "plans.json").read_text())
    return PromptDefaults.from_dict(plans["configurations"]["desam_2d"]["desam"]["prompts"])


@pytest.fixture(scope="module")
def chosen(trained):
    """The command's own function, run once: its configuration, plus what it printed (under ``"printed"``)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = find_best("8", [str(f) for f in FOLDS])
    return {**result, "printed": printed.getvalue()}


def _brute_force_dice(root: Path, prompts: dict, out: Path) -> float:
    """Re-predict every fold's validation cases with the network at ``prompts`` and score them, as nnU-Net would."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from desam_nnu.inference.predictor import DeSAMPredictor, export_case_atomically

    pre = root / "nnUNet_preprocessed" / "Dataset008_Synth"
    splits = json.loads((pre / "splits_final.json").read_text())
    out.mkdir(parents=True)
    overrides = dict(mode=prompts["mode"], grid_points_per_side=prompts["grid_points_per_side"],
                     iou_threshold=prompts["iou_threshold"], top_k=prompts["top_k"])
    for f in FOLDS:
        p = DeSAMPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False,
                           prompt_overrides=overrides)
        p.initialize_from_trained_model_folder(str(_model(root)), [f], "checkpoint_final.pth")
        p.network.load_state_dict(p.list_of_parameters[0])
        data_folder = str(pre / p.configuration_manager.data_identifier)
        ds = infer_dataset_class(data_folder)(data_folder, splits[f]["val"])
        for case in splits[f]["val"]:
            data, _, _, props = ds.load_case(case)
            logits = p.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data)))
            export_case_atomically(logits, props, p.configuration_manager, p.plans_manager, p.dataset_json, str(out),
                                   case, False)
    rw = p.plans_manager.image_reader_writer_class()
    m = compute_metrics_on_folder(str(pre / "gt_segmentations"), str(out), None, rw, ".nii.gz", [1, 2], None, 1)
    return float(m["foreground_mean"]["Dice"])


def test_validation_stores_candidates_for_the_trained_modes(trained):
    for f in FOLDS:
        store = _model(trained) / f"fold_{f}" / "validation" / candidates.FOLDER
        meta = json.loads((store / candidates.META).read_text())
        patch = tuple(json.loads((_model(trained) / "plans.json").read_text())["configurations"]["desam_2d"]["patch_size"])
        assert meta["modes"] == ["grid", "box"] and meta["training_prompts"] == "mixed" and meta["top_k"] == 3
        for case in meta["cases"]:
            with np.load(store / f"{case}.npz") as z:
                t = len(z["fingerprint"])
                assert t > 0 and z["grid_logits"].shape == (t, 3, 2, *patch) and z["grid_iou"].shape == (t, 3, 2)
                assert z["box"].shape == (t, 2, *patch)
                assert np.all(np.diff(z["grid_iou"], axis=1) <= 0)  # best first, per class
    assert trained_predict_modes(str(_model(trained)), FOLDS, _plan_prompts(_model(trained))) == ("grid", "box")


def test_sweep_equals_brute_force_reprediction(trained, chosen, tmp_path):
    """Every distinct setting's replayed Dice equals the Dice of running the network at that setting; the
    chosen one is the brute-force best."""
    table = chosen["candidates"]
    assert {c["prompts"]["mode"] for c in table} == {"grid", "box"}
    assert len(table) == 1 + 13 * 3  # box + the plans' thresholds x top-k (the default is one of them)
    distinct = [c for c in table if c["same_outputs_as"] is None]
    brute = {}
    for i, c in enumerate(distinct):
        brute[c["label"]] = _brute_force_dice(trained, c["prompts"], tmp_path / f"bf{i}")
        assert abs(brute[c["label"]] - c["dice"]) <= 1e-6, (c["label"], brute[c["label"]], c["dice"])
    for c in table:  # settings scored as twins of another really give its outputs (to float rounding: on a CPU
        if c["same_outputs_as"] is not None:  # PRIM recomputes the kept prompts, a batch that differs per setting)
            assert abs(c["dice"] - brute[c["same_outputs_as"]]) <= 1e-6
    assert len(set(round(v, 6) for v in brute.values())) > 1  # the sweep really had something to choose
    best = max(brute.values())
    assert abs(chosen["dice"]["selected"] - best) <= 1e-6
    picked = next(c for c in distinct if c["prompts"] == chosen["prompts"])
    assert abs(brute[picked["label"]] - best) <= 1e-6
    # one threshold re-predicted directly (not through the table): the same Dice
    t = next(c for c in table if c["prompts"]["mode"] == "grid" and c["prompts"]["top_k"] == 2
             and c["prompts"]["iou_threshold"] == 0.1)
    assert abs(_brute_force_dice(trained, t["prompts"], tmp_path / "t01") - t["dice"]) <= 1e-6


def test_configuration_file_and_table(trained, chosen):
    data = json.loads((_model(trained) / FILE).read_text())
    assert data["prompts"] == chosen["prompts"] and data["folds"] == ["0", "1"]
    assert data["plans_sha256"] == plans_sha256(str(_model(trained)))
    assert all(step["function"] == "remove_all_but_largest_component_from_segmentation" for step in data["postprocessing"])
    assert data["dice"]["after_postprocessing"] >= data["dice"]["selected"] - 1e-9
    assert not list(_model(trained).glob(".find_best-*"))  # its scratch folder is gone
    # the command prints every candidate with its Dice and marks the chosen one
    out = chosen["printed"]
    rows = [line for line in out.splitlines() if line[2:].startswith(("grid iou>=", "box "))]
    assert len(rows) == 40 and sum(line.startswith("* ") for line in rows) == 1
    assert all(float(line[28:38]) >= 0 for line in rows if "nan" not in line[28:38])
    assert "written to" in out and FILE in out


def test_missing_validation_results_name_the_folds(trained, capsys):
    before = (_model(trained) / FILE).read_bytes()
    assert find_best_main(["8", "-f", "0", "3", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fold(s) 3, 4" in err and "desam_train 8 FOLD --val" in err
    assert (_model(trained) / FILE).read_bytes() == before  # nothing written


def test_failed_selection_writes_nothing(trained, monkeypatch):
    import desam_nnu.inference.find_best as fb

    before = (_model(trained) / FILE).read_bytes()

    def broken(references, predictions, *args, **kwargs):
        assert list(Path(predictions).glob("*.nii.gz"))  # the replayed outputs are in the scratch folder
        raise RuntimeError("scoring crashed")

    # a crash once the candidates' outputs fill the scratch folder (the first scoring, after the replay)
    monkeypatch.setattr(fb, "compute_metrics_on_folder", broken)
    with pytest.raises(RuntimeError, match="scoring crashed"):
        find_best_configuration(8, FOLDS, allow_tqdm=False)
    assert (_model(trained) / FILE).read_bytes() == before
    assert not list(_model(trained).glob(".find_best-*")) and not list(_model(trained).glob(f"{FILE}.*"))


def _case(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = synthetic_case((6, 44, 52), np.random.default_rng(11))
    write_nifti(images[0], str(folder / f"{name}_0000.nii.gz"), (0.8, 0.8, 4.0))


def _write_choice(model: Path, **changes) -> None:
    data = json.loads((model / FILE).read_text())
    for k, v in changes.items():
        data[k] = v
    (model / FILE).write_text(json.dumps(data))


def test_predict_follows_the_choice_and_flags_win(trained, chosen, tmp_path, capsys):
    _case(tmp_path / "in", "x")
    model = _model(trained)
    saved = (model / FILE).read_text()
    try:
        _write_choice(model, prompts=dict(mode="grid", grid_points_per_side=5, iou_threshold=-1.0, top_k=2),
                      postprocessing=[{"function": "remove_all_but_largest_component_from_segmentation",
                                       "kwargs": {"labels_or_regions": [1, 2]}}])
        base = ["-i", str(tmp_path / "in"), "-d", "8", "--disable-tta", "-npp", "0", "-nps", "0"]
        assert predict_main(base + ["-o", str(tmp_path / "o1")]) == 0
        assert "using the configuration chosen from cross-validation" in capsys.readouterr().out
        args = json.loads((tmp_path / "o1" / "predict_args.json").read_text())
        assert (args["prompt_mode"], args["grid_points_per_side"], args["iou_threshold"], args["top_k"]) == \
               ("grid", 5, -1.0, 2)
        assert args["postprocessing"] == ["remove_all_but_largest_component_from_segmentation"]
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o1" / "x.nii.gz")))
        assert seg.any() and ndimage.label(seg > 0)[1] == 1  # nnU-Net's postprocessing: one foreground component
        # explicit flags win over the choice, item by item
        assert predict_main(base + ["-o", str(tmp_path / "o2"), "--iou-thresh", "0.95", "--top-k", "1"]) == 0
        assert "from the command line: iou_threshold=0.95, top_k=1" in capsys.readouterr().out
        args = json.loads((tmp_path / "o2" / "predict_args.json").read_text())
        assert (args["grid_points_per_side"], args["iou_threshold"], args["top_k"]) == (5, 0.95, 1)
    finally:
        (model / FILE).write_text(saved)


def test_without_a_choice_predict_says_how_to_make_one(trained, tmp_path, capsys):
    _case(tmp_path / "in", "x")
    model = _model(trained)
    moved = tmp_path / FILE
    shutil.move(str(model / FILE), str(moved))
    try:
        assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-d", "8", "--disable-tta",
                             "-npp", "0", "-nps", "0"]) == 0
        out = capsys.readouterr().out
        assert "no chosen inference configuration" in out and "desam_find_best_configuration" in out
        assert json.loads((tmp_path / "o" / "predict_args.json").read_text())["iou_threshold"] == 0.5
    finally:
        shutil.move(str(moved), str(model / FILE))


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / FILE).write_text("{not json"), "corrupt inference configuration"),
    (lambda m: _write_choice(m, prompts={"mode": "grid"}), "corrupt inference configuration"),
    (lambda m: _write_choice(m, postprocessing=[{"function": "os.system", "kwargs": {"labels_or_regions": 1}}]),
     "unknown postprocessing function"),
    (lambda m: _write_choice(m, plans_sha256="0" * 64), "chosen for other plans"),
    (lambda m: _write_choice(m, prompts=None), "chooses no prompts, but the model is prompted"),
])
def test_damaged_configuration_stops_prediction(trained, tmp_path, capsys, damage, message):
    _case(tmp_path / "in", "x")
    model = _model(trained)
    saved = (model / FILE).read_text()
    try:
        damage(model)
        assert predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-d", "8", "-npp", "0",
                             "-nps", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(model / FILE) in err and message in err
        assert not (tmp_path / "o" / "x.nii.gz").exists()
    finally:
        (model / FILE).write_text(saved)


def test_a_mode_the_folds_were_not_trained_for_is_refused(trained, tmp_path):
    """A box choice for folds trained with points only: inconsistent, named, never silently used."""
    model = tmp_path / "model"
    shutil.copytree(_model(trained), model, ignore=shutil.ignore_patterns("*.npz", "*.pth", "validation"))
    for f in FOLDS:
        opts = json.loads((model / f"fold_{f}" / "desam_options.json").read_text())
        (model / f"fold_{f}" / "desam_options.json").write_text(json.dumps(dict(opts, prompt_mode="points")))
    _write_choice(model, prompts=dict(mode="box", grid_points_per_side=9, iou_threshold=0.5, top_k=1))
    modes = trained_predict_modes(str(model), FOLDS, _plan_prompts(model))
    assert modes == ("grid",)
    with pytest.raises(DeSAMInputError, match="chooses box prompts, but the folds were trained for grid"):
        read_configuration(str(model), modes, [1, 2])


def test_replay_finds_each_tile_by_its_fingerprint_in_any_order():
    """Many tiles per call with mirroring change the order of the calls with the device's batch: the replay
    finds each stored tile by its fingerprint, uses each once, and names a tile it never stored."""
    from desam_nnu.inference.prompted import CandidateRecord, PromptSettings, TileCandidates, tile_fingerprint
    tiles = torch.rand(4, 1, 8, 8) * 255
    record = CandidateRecord(modes=("box",), top_k=1)
    record.tiles = [TileCandidates(tile_fingerprint(t), box=torch.full((2, 8, 8), float(i)))
                    for i, t in enumerate(tiles)]
    replay = candidates.CandidateReplay(2, record, PromptSettings(mode="box"), "case")
    out = replay(tiles[[2, 0]])
    assert out[:, 1:].flatten(1).mean(1).tolist() == [2.0, 0.0]  # each tile's own stored output
    with pytest.raises(DeSAMInputError, match="used 2 of 4 stored tiles"):
        replay.check_finished()
    replay(tiles[[3, 1]])
    replay.check_finished()
    with pytest.raises(DeSAMInputError, match="asks for more"):
        replay(tiles[:1])
    fresh = candidates.CandidateReplay(2, record, PromptSettings(mode="box"), "case")
    with pytest.raises(DeSAMInputError, match="case: a tile differs from every one"):
        fresh(tiles[:1] + 1)
