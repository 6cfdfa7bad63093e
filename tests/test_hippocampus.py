"""End to end on real MRI: a 20-case subset of ../shared/datasets/Dataset004_Hippocampus (skips if absent)."""
import json
import os

import numpy as np
import SimpleITK as sitk
from conftest import HIPPOCAMPUS, hippocampus_subset

from desam_nnu.cli.evaluate import main as evaluate_main
from desam_nnu.cli.predict import main as predict_main

from desam_nnu.config import CONFIGURATION, PLANS_NAME
from desam_nnu.planners.plan_and_preprocess import plan_and_preprocess
from desam_nnu.planners.plans import DeSAMPlansManager


def test_hippocampus_subset_plans_and_preprocesses(nnunet_dirs):
    hippocampus_subset(nnunet_dirs["nnUNet_raw"], 20)
    plan_and_preprocess(4, num_processes=2, backbone="vit_b")
    pre = nnunet_dirs["nnUNet_preprocessed"] / "Dataset004_Hippocampus"
    plans = json.loads((pre / f"{PLANS_NAME}.json").read_text())
    cm = DeSAMPlansManager(plans).get_configuration(CONFIGURATION)
    d = cm.desam
    # 1 mm isotropic, ~35x50x36: nnU-Net's tie-break slices across axis 0; the patch covers the ~51x36 slice
    assert d.slicing_axis == 0 and cm.spacing == [1.0, 1.0]
    assert d.patch_size == (56, 56) and d.image_size == 256 and d.mask_logits_size == (64, 64)
    assert d.num_classes == 2 and d.prompts.grid_points_per_side == 9 and d.prompts.iou_threshold == 0.5
    assert d.cache.num_slices == sum(s[0] for s in json.loads((pre / "dataset_fingerprint.json").read_text())
                                     ["shapes_after_crop"])

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    folder = pre / cm.data_identifier
    ds = infer_dataset_class(str(folder))(str(folder))
    assert len(ds.identifiers) == 20
    for key in ds.identifiers[:3]:
        data, seg, _, props = ds.load_case(key)
        data = np.asarray(data)
        assert data.shape[0] == 1 and 0.0 <= data.min() and data.max() <= 255.0 + 1e-3
        assert set(np.unique(np.asarray(seg))) <= {-1, 0, 1, 2}  # -1: outside the nonzero mask (nnU-Net)
        assert props["class_locations"][1].shape[1] == 4  # nnU-Net's foreground sampling ran


def test_hippocampus_subset_trains_validates_and_predicts(nnunet_dirs, monkeypatch):
    """The default backbone (pretrained medsam_lite, no SAM checkpoint): plan, train a few iterations
    (online: no cache build for 4 iterations), validate in grid mode, then predict a held-back case
    in box mode and score it."""
    from desam_nnu.cli.train import train
    monkeypatch.delenv("DESAM_SAM_CHECKPOINT", raising=False)
    hippocampus_subset(nnunet_dirs["nnUNet_raw"], 5)  # 5 folds of 5: one validation case
    plans = plan_and_preprocess(4, num_processes=2)
    d = DeSAMPlansManager(plans).get_configuration(CONFIGURATION).desam
    assert d.backbone == "medsam_lite" and d.image_size == 128 and d.cache.default == "auto"
    assert d.mask_logits_size == (64, 64)  # PDMM at half resolution
    t = train(4, 0, device="cpu", epochs=1, iterations_per_epoch=4, val_iterations=1, use_cache=False)
    assert not t.use_cache and t.network.trainable_parameter_count() < sum(p.numel() for p in t.network.parameters())
    fold = nnunet_dirs["nnUNet_results"] / "Dataset004_Hippocampus" / "DeSAMTrainer__DeSAMPlans__desam_2d" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 1 and set(summary["mean"]) == {"1", "2"}
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "progress.png").is_file()
    assert len(t.items.cases) == 5 and t.items.has_foreground.any() and (~t.items.has_foreground).any()

    # a held-back case (not among the 5 planned and trained on), predicted as a whole volume and scored
    test_dir = nnunet_dirs["nnUNet_raw"].parent / "test"
    for sub in ("imagesTs", "labelsTs"):
        (test_dir / sub).mkdir(parents=True)
    held_back = sorted(f.name[: -len(".nii.gz")] for f in (HIPPOCAMPUS / "labelsTr").glob("*.nii.gz"))[5:6]
    for case in held_back:
        os.symlink(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", test_dir / "imagesTs" / f"{case}_0000.nii.gz")
        os.symlink(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz", test_dir / "labelsTs" / f"{case}.nii.gz")
    out = test_dir / "pred"
    assert predict_main(["-i", str(test_dir / "imagesTs"), "-o", str(out), "-d", "4", "--disable-tta", "--preview",
                         "--prompt-mode", "box", "-npp", "0", "-nps", "0"]) == 0
    for case in held_back:
        image = sitk.ReadImage(str(test_dir / "imagesTs" / f"{case}_0000.nii.gz"))
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert pred.GetSize() == image.GetSize() and pred.GetSpacing() == image.GetSpacing()
        assert pred.GetOrigin() == image.GetOrigin() and pred.GetDirection() == image.GetDirection()
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
        assert (out / "previews" / f"{case}.png").is_file()
    assert evaluate_main(["-ref", str(test_dir / "labelsTs"), "-pred", str(out)]) == 0
    scored = json.loads((out / "summary.json").read_text())
    assert len(scored["metric_per_case"]) == 1 and set(scored["mean"]) == {"1", "2"}
