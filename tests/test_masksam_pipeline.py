"""MaskSAM through the pipeline on synthetic NIfTI: plan (--family masksam: the masksam_3d configuration) -> train
on nnU-Net's 3D loader -> predict with nnU-Net's 3D sliding window over a volume larger than the patch ->
evaluate; the network built from the plans alone, identically by trainer and predictor."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import planned_tiny_dataset
from synthetic import synthetic_case, write_nifti

from desam_nnu.cli.evaluate import main as evaluate_main
from desam_nnu.cli.predict import main as predict_main
from desam_nnu.cli.train import train
from desam_nnu.config import CONFIGURATION_3D, DeSAMConfig, plans_configuration
from desam_nnu.inference.predictor import DeSAMPredictor
from desam_nnu.inference.prompt_free import MixtureTiles
from desam_nnu.model import CheckpointError, MaskSAM, build_network
from desam_nnu.model.masksam import load_official_masksam, load_sam_into_masksam
from desam_nnu.planners.planner import choose_3d_patch
from desam_nnu.planners.plans import mixture_probabilities
from desam_nnu.trainers.masksam_trainer import MaskSAMTrainer

DATASET = 13
MODEL = f"Dataset0{DATASET}_Synth/MaskSAMTrainer__DeSAMPlans__masksam_3d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset013 planned for MaskSAM on the tiny ViT (64 px input, 4 x 16 x 16 patches), fold 0 trained 3
    iterations (nnU-Net's loader in-process: forked workers and torch threads do not mix on a CPU)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("nnUNet_n_proc_DA", "0")
    try:
        for root in planned_tiny_dataset(tmp_path_factory, DATASET, 5, (6, 28, 32), family="masksam"):
            yield root, train(DATASET, 0, device="cpu", epochs=1, iterations_per_epoch=3, val_iterations=1)
    finally:
        mp.undo()


def _configuration(root: Path) -> dict:
    plans = json.loads((root / "nnUNet_preprocessed" / f"Dataset0{DATASET}_Synth" / "DeSAMPlans.json").read_text())
    assert plans_configuration(plans) == CONFIGURATION_3D
    return plans["configurations"][CONFIGURATION_3D]


def test_the_plans_hold_the_3d_configuration(trained):
    root, _ = trained
    conf = _configuration(root)
    # 4 slices (the official ACDC depth) x the ACDC layout's patch of a quarter of SAM's input, at 3d_fullres spacing
    assert conf["patch_size"] == [4, 16, 16] and conf["batch_size"] == 2
    assert conf["spacing"] == pytest.approx([4.0, 0.8, 0.8])
    assert conf["architecture"]["arch_kwargs"] == {"family": "masksam", "backbone": "tiny", "image_size": 64,
                                                   "num_classes": 2, "num_frames": 4, "input_channels": 1}
    d = conf["desam"]
    assert d["input_normalisation"] == "unit_range" and d["prompts"] is None and d["embedding_cache"]["default"] == \
        "online"
    cfg = DeSAMConfig.from_configuration(conf)
    assert cfg.slices_per_patch == 4 and cfg.patch_size == (16, 16)
    net = cfg.build_network()
    assert isinstance(net, MaskSAM) and net.num_frames == 4 and net.patch == (16, 16) and net.num_classes == 3


def test_choose_3d_patch():
    assert choose_3d_patch((36.0, 50.0, 35.0), 4, 1024) == ([4, 64, 64], 256)  # hippocampus: 256 px, 16 x 16 tokens
    assert choose_3d_patch((2.0, 300.0, 280.0), 4, 1024) == ([2, 256, 256], 1024)  # thin: T = depth; SAM's 1024 cap
    assert choose_3d_patch((20.0, 130.0, 100.0), 4, 1024) == ([4, 144, 144], 576)


def test_trainer_uses_nnunets_3d_loader_and_the_official_recipe(trained):
    _, t = trained
    assert isinstance(t, MaskSAMTrainer)
    trainable = {n for n, p in t.bare_network.named_parameters() if p.requires_grad}
    assert "sam_model.image_encoder.blocks.0.attn.qkv.weight" not in trainable
    assert "sam_model.mask_decoder.transformer.layers.0.self_attn.q_proj.weight" not in trainable
    for name in ("sam_model.image_encoder.temporal_embedding", "sam_model.prompt_encoder.temporal_embedding",
                 "sam_model.mask_decoder.classifier_embed_Adapter.weight", "first_conv.0.convs.0.conv.weight",
                 "bbox_conv.convs.0.conv.weight", "sam_model.image_encoder.blocks.0.Space_Adapter.D_fc1.weight"):
        assert name in trainable, name
    opt = t.optimizer
    assert isinstance(opt, torch.optim.SGD) and t.initial_lr == 1e-3
    assert opt.param_groups[0]["momentum"] == 0.99 and opt.param_groups[0]["nesterov"]
    assert opt.param_groups[0]["weight_decay"] == 3e-5
    assert t.inference_allowed_mirroring_axes == (0, 1, 2)
    train_loader, _ = t.get_dataloaders()
    batch = next(train_loader)
    assert tuple(batch["data"].shape) == (2, 1, 4, 16, 16) and tuple(batch["target"].shape) == (2, 1, 4, 16, 16)
    out = t.validation_step(batch)
    assert out["tp_hard"].shape == (2,) and np.isfinite(out["loss"])
    log = next((Path(t.output_folder)).glob("training_log_*.txt")).read_text()
    assert "masksam on tiny at 64px" in log and (Path(t.output_folder) / "progress.png").is_file()


def test_trainer_and_predictor_build_the_same_network(trained):
    root, t = trained
    p = DeSAMPredictor(device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(root / "nnUNet_results" / MODEL), [0], "checkpoint_final.pth")
    assert isinstance(p.network, MixtureTiles) and list(p.configuration_manager.patch_size) == [4, 16, 16]
    p.network.load_state_dict(p.list_of_parameters[0])
    ours, theirs = t.bare_network.state_dict(), p.network.network.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k].cpu(), rtol=0, atol=0)
    tiles = torch.rand(2, 1, 4, 16, 16) * 255
    tiles[1] = 7.0  # no contrast: background without a network call
    out = p.network(tiles)
    assert out.shape == (2, 3, 4, 16, 16) and (out >= 0).all()
    np.testing.assert_array_equal(out[1, 0].numpy(), 1.0)
    assert float(out[1, 1:].abs().max()) == 0.0
    with torch.no_grad():
        direct = p.network.network(tiles[:1] / 255)
    torch.testing.assert_close(out[:1], direct)


def test_mixture_probabilities_keep_the_argmax_and_sum_to_one():
    mixture = torch.rand(3, 4, 5, 6) * 4
    probabilities = mixture_probabilities(mixture)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(4, 5, 6))
    assert torch.equal(probabilities.argmax(0), mixture.argmax(0))


def test_predict_a_volume_larger_than_the_patch_then_evaluate(trained, tmp_path):
    root, _ = trained
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "labelsTs").mkdir()
    images, labels = synthetic_case((7, 26, 30), np.random.default_rng(1))
    write_nifti(images[0], str(tmp_path / "imagesTs" / "a_0000.nii.gz"), (0.8, 0.8, 4.0))
    write_nifti(labels, str(tmp_path / "labelsTs" / "a.nii.gz"), (0.8, 0.8, 4.0))
    out = tmp_path / "pred"
    args = ["-i", str(tmp_path / "imagesTs"), "-o", str(out), "-d", str(DATASET), "--disable-tta", "-npp", "0",
            "-nps", "0"]
    assert predict_main(args) == 0
    assert json.loads((out / "predict_args.json").read_text())["family"] == "masksam"
    given, predicted = (sitk.ReadImage(str(p)) for p in (tmp_path / "imagesTs" / "a_0000.nii.gz", out / "a.nii.gz"))
    assert predicted.GetSize() == given.GetSize() == (30, 26, 7)
    assert predicted.GetSpacing() == given.GetSpacing() and predicted.GetOrigin() == given.GetOrigin()
    assert predicted.GetDirection() == given.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= {0, 1, 2}
    assert evaluate_main(["-ref", str(tmp_path / "labelsTs"), "-pred", str(out), "-d", str(DATASET)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}


def test_sam_and_official_weights_load_strictly():
    net = build_network("masksam", "tiny", image_size=64, num_classes=2, num_frames=2)
    other = build_network("masksam", "tiny", image_size=64, num_classes=2, num_frames=2)
    sam = {k[len("sam_model."):]: torch.randn_like(v) for k, v in other.state_dict().items()
           if k.startswith("sam_model.") and not any(p in k for p in ("temporal_embedding", "Adapter", "adapter"))}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_sam_into_masksam(sam, net)
    after = net.state_dict()
    for k, v in after.items():
        fresh = k.startswith("sam_model.") and k[len("sam_model."):] in sam
        torch.testing.assert_close(v, sam[k[len("sam_model."):]] if fresh else before[k], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_sam_into_masksam({k: v for k, v in sam.items() if "patch_embed" not in k}, net)
    load_official_masksam(other.state_dict(), net)
    torch.testing.assert_close(net.state_dict()["bbox_conv.convs.0.conv.weight"],
                               other.state_dict()["bbox_conv.convs.0.conv.weight"], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_official_masksam({**other.state_dict(), "extra.weight": torch.zeros(1)}, net)
    with pytest.raises(ValueError, match="needs a multiple of 64"):
        build_network("masksam", "tiny", image_size=96)
