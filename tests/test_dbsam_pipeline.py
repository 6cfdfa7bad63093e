"""DB-SAM through the pipeline on synthetic NIfTI: plan (--family dbsam) -> train -> predict (its automatic
whole-tile box, and the user's boxes from a file) -> evaluate; its training boxes, schedule and the medsam_lite
extension's start from LiteMedSAM."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import planned_tiny_dataset
from synthetic import synthetic_case, write_nifti

from desam_nnu.cli.predict import main as predict_main
from desam_nnu.cli.train import train
from desam_nnu.config import CONFIGURATION, DeSAMConfig
from desam_nnu.inference.predictor import DeSAMPredictor
from desam_nnu.inference.prompt_free import PromptFreeTiles
from desam_nnu.model import DBSAM, build_network
from desam_nnu.prompts import training_boxes
from desam_nnu.trainers.dbsam_trainer import DBSAMTrainer
from desam_nnu.trainers.warmup_poly import WarmupPolyLR

SPACING = (0.8, 0.8, 4.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset009 planned for DB-SAM on the tiny backbone (64 px), fold 0 trained 3 iterations."""
    for root in planned_tiny_dataset(tmp_path_factory, 9, 5, (6, 40, 48), family="dbsam"):
        t = train(9, 0, device="cpu", epochs=1, iterations_per_epoch=3, val_iterations=1)
        yield root, t


def test_plans_trainer_and_predictor_hold_the_family_decisions(trained):
    root, t = trained
    conf = json.loads((root / "nnUNet_preprocessed" / "Dataset009_Synth" / "DeSAMPlans.json").read_text())
    d = conf["configurations"][CONFIGURATION]["desam"]
    assert d["family"] == "dbsam" and d["prompts"] is None and d["automatic_mode"] == "whole_image_box"
    assert d["user_prompts"] == ["boxes"] and d["embedding_cache"]["default"] == "online"
    assert d["resize"]["mask_logits_size"] == [16, 16]  # SAM's decoder: 1/4 of the 64 px input
    net = DeSAMConfig.from_configuration(conf["configurations"][CONFIGURATION]).build_network()
    assert isinstance(net, DBSAM) and net.num_classes == 2 and net.class_embed.weight.shape == (2, 64)
    assert isinstance(t, DBSAMTrainer) and isinstance(t.lr_scheduler, WarmupPolyLR) and t.lr_scheduler.factor == 0.5
    trainable = {n for n, p in t.bare_network.named_parameters() if p.requires_grad}
    assert "class_embed.weight" in trainable and "mask_decoder.iou_token.weight" in trainable
    assert not any(n.startswith("image_encoder.") and not n.startswith(("image_encoder.adapter.",
                                                                        "image_encoder.neck.")) for n in trainable)
    options = json.loads(open(f"{t.output_folder}/desam_options.json").read())
    assert options["family"] == "dbsam" and options["box_jitter_px"] == 5 and options["warmup_factor"] == 0.5
    predictor = DeSAMPredictor(device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(t.output_folder.rsplit("/fold_", 1)[0], [0])
    assert isinstance(predictor.network, PromptFreeTiles)
    assert "a box over each whole tile per class" in predictor.configuration_note


def test_training_boxes_are_the_class_bounds_jittered_outward_or_the_whole_input():
    seg = torch.zeros(2, 8, 8, dtype=torch.long)
    seg[0, 2:5, 3:7] = 1  # rows 2..4, columns 3..6
    seg[1, 0:2, 0:2] = 2
    g = torch.Generator().manual_seed(0)
    boxes, classes = training_boxes(seg, 2, 16, jitter_px=0, whole_fraction=0.0, generator=g)
    assert classes.tolist() == [[0, 1], [0, 1]]
    # voxel centres at 2x: column 3 -> 6.5, row 2 -> 4.5, column 6 -> 12.5, row 4 -> 8.5
    assert boxes[0, 0].tolist() == [6.5, 4.5, 12.5, 8.5]
    assert boxes[0, 1].tolist() == [0.0, 0.0, 16.0, 16.0]  # class 2 absent: the whole input
    assert boxes[1, 1].tolist() == [0.5, 0.5, 2.5, 2.5]
    jittered = torch.stack([training_boxes(seg, 2, 16, 3, 0.0, g)[0][0, 0] for _ in range(200)])
    moved = (jittered - boxes[0, 0]) * torch.tensor([-1, -1, 1, 1])
    assert moved.min() == 0 and moved.max() == 3 and len(set(moved.flatten().tolist())) == 4  # outward 0..3 px
    wholes = sum(bool((training_boxes(seg, 2, 16, 0, 0.5, g)[0][0, 0] == 16).any()) for _ in range(200))
    assert 70 < wholes < 130  # half the present classes' boxes cover the whole input


def test_warmup_is_5_percent_at_half_the_rate_then_poly():
    t = SimpleNamespace(warmup_iterations=None, warmup_share=0.05, num_epochs=20, num_iterations_per_epoch=10,
                        time_budget=None, budget_spent_s=0.0, _warmup_ended_s=None)
    for name in ("_warmup_iterations", "_warmup_progress", "_poly_progress"):
        setattr(t, name, getattr(DBSAMTrainer, name).__get__(t))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lr = WarmupPolyLR(opt, 1e-4, t._warmup_progress, t._poly_progress, factor=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)  # the official's first epoch of 20: 1e-4 / 2
    lr.iteration = 8
    lr.step_iteration()  # iteration 9, the warm-up's last (10 of 200)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 0 / 190) ** 0.9)
    lr.iteration = 198
    lr.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def _volume(folder, case, seed):
    images, labels = synthetic_case((7, 42, 50), np.random.default_rng(seed))
    write_nifti(images[0], str(folder / f"{case}_0000.nii.gz"), SPACING)
    return labels


def test_predict_automatic_and_with_boxes_from_a_file(trained, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    labels = _volume(tmp_path / "in", "a", 1)
    args = ["-i", str(tmp_path / "in"), "-d", "9", "--disable-tta", "-npp", "0", "-nps", "0"]
    assert predict_main(args + ["-o", str(tmp_path / "auto")]) == 0
    assert (tmp_path / "auto" / "a.nii.gz").is_file()
    zs, ys, xs = np.nonzero(labels == 1)
    box = {"box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
           "slices": [int(zs.min()), int(zs.max())]}
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"cases": {"a": {"1": {"boxes": [box]}}}}))
    assert predict_main(args + ["-o", str(tmp_path / "boxed"), "--prompts", str(prompts)]) == 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "boxed" / "a.nii.gz")))
    assert pred.shape == labels.shape and not (pred == 2).any()  # class 2 had no box: empty
    assert json.loads((tmp_path / "boxed" / "predict_args.json").read_text())["prompts_file"] == str(prompts)
    prompts.write_text(json.dumps({"cases": {"a": {"2": {"points": [{"point": [20, 20, 3]}]}}}}))
    assert predict_main(args + ["-o", str(tmp_path / "clicked"), "--prompts", str(prompts)]) == 2
    assert "cases.a.2.points: the model takes boxes only" in capsys.readouterr().err
    assert not (tmp_path / "clicked" / "a.nii.gz").exists()


def test_medsam_lite_extension_starts_as_litemedsam_and_keeps_its_norm_statistics():
    """The adapter's outputs start at zero and the class embedding too: the untrained DB-SAM on medsam_lite
    is LiteMedSAM, box for box; its frozen TinyViT's BatchNorms stay in eval mode when the network trains."""
    torch.manual_seed(0)
    net = build_network("dbsam", "medsam_lite", image_size=64, num_classes=2).eval()
    lite = build_network("desam", "medsam_lite", image_size=64).eval()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        emb = net.encode(x)
        torch.testing.assert_close(emb, lite.image_encoder.forward_features(x / 255), rtol=0, atol=0)
        box = torch.tensor([[8.0, 10.0, 40.0, 50.0]] * 2)
        official = net.decode(emb, box)  # class-agnostic, as the official
        torch.testing.assert_close(net.decode(emb, box[:, None], torch.ones(2, 1, dtype=torch.long)), official)
    net.train()
    for p in net.image_encoder.parameters():
        p.requires_grad_(False)
    net.train()
    norms = [m for m in net.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
