"""DAPSAM through the pipeline on synthetic NIfTI: plan (--family dapsam) -> train -> predict -> evaluate, the
network built from the plans alone, identically by trainer and predictor."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import planned_tiny_dataset
from synthetic import synthetic_case, write_nifti
from torch._dynamo import OptimizedModule

from desam_nnu.cli.evaluate import main as evaluate_main
from desam_nnu.cli.predict import main as predict_main
from desam_nnu.cli.train import train
from desam_nnu.config import CONFIGURATION, DeSAMConfig
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.predictor import DeSAMPredictor
from desam_nnu.inference.prompt_free import PromptFreeTiles
from desam_nnu.model import DAPSAM
from desam_nnu.trainers.dapsam_trainer import DAPSAMTrainer, WarmupPolyLR

MODEL = "Dataset008_Synth/DAPSAMTrainer__DeSAMPlans__desam_2d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset008 planned for DAPSAM on the tiny backbone (64 px), fold 0 trained 4 iterations."""
    for root in planned_tiny_dataset(tmp_path_factory, 8, 5, (6, 40, 48), family="dapsam"):
        t = train(8, 0, device="cpu", epochs=1, iterations_per_epoch=4, val_iterations=1)
        yield root, t


def _plans(root: Path) -> dict:
    return json.loads((root / "nnUNet_preprocessed" / "Dataset008_Synth" / "DeSAMPlans.json").read_text())


def test_the_plans_hold_the_family_decisions(trained):
    root, _ = trained
    conf = _plans(root)["configurations"][CONFIGURATION]
    d = conf["desam"]
    assert d["family"] == "dapsam" and d["prompts"] is None and d["input_normalisation"] == "per_image_zscore"
    assert d["resize"]["mask_logits_size"] == [16, 16]  # the decoder's 1/4 of the 64 px input
    assert d["embedding_cache"]["default"] == "online"
    assert conf["architecture"]["network_class_name"] == "desam_nnu.model.DAPSAM"
    assert conf["architecture"]["arch_kwargs"]["family"] == "dapsam"
    cfg = DeSAMConfig.from_configuration(conf)
    net = cfg.build_network()
    assert isinstance(net, DAPSAM) and net.num_classes == 2 and net.image_size == 64


def test_trainer_and_predictor_build_the_same_network_and_train_the_official_parts(trained):
    root, t = trained
    assert isinstance(t, DAPSAMTrainer) and isinstance(t.lr_scheduler, WarmupPolyLR)
    trainable = {n for n, p in t.bare_network.named_parameters() if p.requires_grad}
    assert trainable and all("adapter" in n or not n.startswith("image_encoder.") for n in trainable)
    assert "image_encoder.blocks.0.attn.qkv.weight" not in trainable
    # a 4-iteration schedule: 1% of it is less than one iteration of warm-up, and the decay ends at 0
    assert t.lr_scheduler.iteration == 4 and t.optimizer.param_groups[0]["lr"] == 0.0
    assert t.optimizer.param_groups[0]["weight_decay"] == 0.1 and isinstance(t.optimizer, torch.optim.AdamW)
    p = DeSAMPredictor(device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(root / "nnUNet_results" / MODEL), [0], "checkpoint_final.pth")
    assert isinstance(p.network, PromptFreeTiles) and "prompt-free" in p.configuration_note
    ours, theirs = t.bare_network.state_dict(), p.network.network.state_dict()
    assert list(ours) == list(theirs)
    # the predictor's weights are the trained ones (nnU-Net loads them per fold when predicting)
    p.network.load_state_dict(p.list_of_parameters[0])
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k].cpu(), rtol=0, atol=0)
    options = json.loads((root / "nnUNet_results" / MODEL / "fold_0" / "desam_options.json").read_text())
    assert options["family"] == "dapsam" and options["use_cache"] is False and "prompt_mode" not in options


def test_warmup_is_the_officials_250_iterations_or_1_percent_of_a_shorter_schedule():
    from types import SimpleNamespace

    def schedule(**stub):
        t = SimpleNamespace(**{**dict(warmup_iterations=250, warmup_share=0.01, num_epochs=100,
                                      num_iterations_per_epoch=250, time_budget=None, budget_spent_s=0.0,
                                      _warmup_ended_s=None), **stub})
        for name in ("_warmup_iterations", "_warmup_progress", "_poly_progress"):
            setattr(t, name, getattr(DAPSAMTrainer, name).__get__(t))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return t, opt, WarmupPolyLR(opt, 5e-4, t._warmup_progress, t._poly_progress)

    t, opt, lr = schedule()  # nnU-Net's 100 x 250 iterations: the official's 250-iteration warm-up
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 / 250)  # the official's first step, 2e-6
    lr.iteration = 248
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)  # the warm-up's last iteration: the full rate
    lr.iteration = 25_000 - 2
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    t, opt, lr = schedule(time_budget=1800.0)  # 30 minutes: warm-up over 1% of it (18 s), then poly over the rest
    t.budget_spent_s = 9.0
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.5)
    t.budget_spent_s = 18.0
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    t.budget_spent_s = 18.0 + (1800 - 18) / 2
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.5 ** 0.9)


def test_predict_then_evaluate_whole_volumes(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "labelsTs").mkdir()
    for case, seed in (("a", 1), ("b", 2)):
        images, labels = synthetic_case((7, 42, 50), np.random.default_rng(seed))
        write_nifti(images[0], str(tmp_path / "imagesTs" / f"{case}_0000.nii.gz"), (0.8, 0.8, 4.0))
        write_nifti(labels, str(tmp_path / "labelsTs" / f"{case}.nii.gz"), (0.8, 0.8, 4.0))
    out = tmp_path / "pred"
    assert predict_main(["-i", str(tmp_path / "imagesTs"), "-o", str(out), "-d", "8", "--disable-tta"]) == 0
    args = json.loads((out / "predict_args.json").read_text())
    assert args["family"] == "dapsam" and args["prompt_mode"] is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # whatever CPU runs this
    assert predict_main(["-i", str(tmp_path / "imagesTs"), "-o", str(tmp_path / "bf16"), "-d", "8", "--bf16"]) == 2
    assert "error: --bf16 is DeSAM's (its image encoder alone); dapsam predicts in float32" in capsys.readouterr().err
    assert not (tmp_path / "bf16").exists()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz"]
    assert evaluate_main(["-ref", str(tmp_path / "labelsTs"), "-pred", str(out), "-d", "8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert all(0.0 <= summary["mean"][k]["Dice"] <= 1.0 for k in summary["mean"])


def test_find_best_chooses_only_the_postprocessing_and_predict_applies_it(trained, tmp_path, capsys):
    """Prompt-free: nothing to choose but nnU-Net's postprocessing, decided on the fold's final validation and
    written for desam_predict, which applies it as nnU-Net's predictor would."""
    import SimpleITK as sitk
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    from desam_nnu.cli.find_best_configuration import main as find_best_main
    root, _ = trained
    model = root / "nnUNet_results" / MODEL
    assert find_best_main(["8", "-f", "0"]) == 0  # the dataset's only model: DAPSAMTrainer's, as desam_predict -d
    assert "prompt-free: no prompts to choose; postprocessing:" in capsys.readouterr().out
    data = json.loads((model / "desam_inference.json").read_text())
    assert data["prompts"] is None and data["folds"] == ["0"] and data["candidates"] == []
    validation = model / "fold_0" / "validation"
    assert data["validation_cases"] == len(list(validation.glob("*.nii.gz"))) > 0
    summary = json.loads((validation / "summary.json").read_text())  # the final validation's own scores
    assert data["dice"]["selected"] == pytest.approx(summary["foreground_mean"]["Dice"])
    assert not list(model.glob(".find_best-*"))
    (tmp_path / "in").mkdir()
    images, _ = synthetic_case((7, 42, 50), np.random.default_rng(5))
    write_nifti(images[0], str(tmp_path / "in" / "c_0000.nii.gz"), (0.8, 0.8, 4.0))
    saved = (model / "desam_inference.json").read_text()
    args = ["-i", str(tmp_path / "in"), "-d", "8", "--disable-tta", "-npp", "0", "-nps", "0"]
    try:  # whatever the tiny model's validation chose, here: keep the largest component of each class
        step = {"function": remove_all_but_largest_component_from_segmentation.__name__,
                "kwargs": {"labels_or_regions": [1, 2]}}
        (model / "desam_inference.json").unlink()
        assert predict_main(args + ["-o", str(tmp_path / "raw")]) == 0
        (model / "desam_inference.json").write_text(json.dumps(dict(data, postprocessing=[step])))
        assert predict_main(args + ["-o", str(tmp_path / "pp")]) == 0
        assert "using the postprocessing chosen from cross-validation" in capsys.readouterr().out
        assert json.loads((tmp_path / "pp" / "predict_args.json").read_text())["postprocessing"] == [step["function"]]
        raw, pp = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n / "c.nii.gz"))) for n in ("raw", "pp"))
        np.testing.assert_array_equal(pp, remove_all_but_largest_component_from_segmentation(raw, [1, 2]))
    finally:
        (model / "desam_inference.json").write_text(saved)
    # a choice of prompts does not fit a prompt-free model: named, never used
    (model / "desam_inference.json").write_text(json.dumps(dict(data, prompts={"mode": "box"})))
    try:
        assert predict_main(args + ["-o", str(tmp_path / "bad")]) == 2
        assert "chooses prompts for a prompt-free model" in capsys.readouterr().err
    finally:
        (model / "desam_inference.json").write_text(saved)


def test_family_mismatch_and_prompt_options_are_refused(trained):
    with pytest.raises(DeSAMInputError, match="DeSAMTrainer trains the desam family but the plans are for dapsam"):
        train(8, 0, trainer="DeSAMTrainer", device="cpu", epochs=1)
    with pytest.raises(DeSAMInputError, match="the dapsam family has no prompts"):
        train(8, 0, prompt_mode="box", device="cpu", epochs=1)
    with pytest.raises(DeSAMInputError, match="--cache: dapsam encodes online"):
        train(8, 0, use_cache=True, device="cpu", epochs=1)


def test_nnunetv2_train_finds_the_dapsam_trainer(trained):
    env = dict(os.environ, nnUNet_extTrainer=str(Path(__file__).resolve().parents[1] / "trainers"))
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    # nnU-Net's own entry point builds our trainer from the plans and runs its final validation
    done = subprocess.run([exe, "8", "desam_2d", "0", "-tr", "DAPSAMTrainer", "-p", "DeSAMPlans", "-device", "cpu",
                           "--val"], capture_output=True, text=True, env=env, timeout=600)
    assert "Using trainer 'DAPSAMTrainer'" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Mean Validation Dice" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: DAPSAM's CUDA training step and "
                                                         "prediction run where a GPU is")
def test_cuda_trains_with_amp_and_predicts(trained, tmp_path, monkeypatch):
    """nnU-Net's CUDA defaults (compile requested, AMP with its grad scaler): fold 1 trained and predicted on CUDA."""
    root, _ = trained
    monkeypatch.delenv("nnUNet_compile", raising=False)
    t = train(8, 1, device="cuda", epochs=1, iterations_per_epoch=2, val_iterations=1)
    assert t.grad_scaler is not None and not isinstance(t.network, OptimizedModule)
    assert next(t.bare_network.parameters()).device.type == "cuda"
    fold = root / "nnUNet_results" / MODEL / "fold_1"
    saved = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert list(saved) == list(t.bare_network.state_dict())
    assert 0 <= json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] <= 1
    (tmp_path / "imagesTs").mkdir()
    images, _ = synthetic_case((7, 42, 50), np.random.default_rng(3))
    write_nifti(images[0], str(tmp_path / "imagesTs" / "c_0000.nii.gz"), (0.8, 0.8, 4.0))
    out = tmp_path / "pred"
    assert predict_main(["-i", str(tmp_path / "imagesTs"), "-o", str(out), "-d", "8", "-f", "1",
                         "-device", "cuda"]) == 0
    assert (out / "c.nii.gz").is_file()
