"""Training prompts in the right frame, and DeSAM's loss against values worked out by hand."""
import math

import pytest
import torch

from desam_nnu.prompts import make_point_grid, patch_to_input_coords, sample_training_points
from desam_nnu.trainers.loss import SMOOTH, DeSAMLoss


def test_patch_voxels_map_to_x_y_input_pixels():
    """Row 2, column 9 of a patch resized x2: the voxel centre is input pixel x = 18.5, y = 4.5 (SAM adds 0.5)."""
    xy = patch_to_input_coords(torch.tensor([2, 7]), torch.tensor([9, 0]), 2.0)
    torch.testing.assert_close(xy, torch.tensor([[18.5, 4.5], [0.5, 14.5]]))


def test_training_points_land_on_their_voxel_with_the_class_as_iou_target():
    """Non-square slices (8 x 12), one voxel per class: foreground points hit it exactly, in (x, y) order."""
    seg = torch.zeros(4, 8, 12, dtype=torch.long)
    seg[0, 2, 9] = 1
    seg[1, 6, 1] = 2
    seg[3] = -1  # padding everywhere but one background voxel
    seg[3, 5, 10] = 0
    coords, labels, target = sample_training_points(seg, 2, 2.0, foreground_fraction=1.0,
                                                    generator=torch.Generator().manual_seed(0))
    assert coords.shape == (4, 1, 2) and labels.tolist() == [[1]] * 4
    torch.testing.assert_close(coords[0, 0], torch.tensor([18.5, 4.5]))  # x from the column, y from the row
    torch.testing.assert_close(coords[1, 0], torch.tensor([2.5, 12.5]))
    torch.testing.assert_close(coords[3, 0], torch.tensor([20.5, 10.5]))  # never on padding
    assert target.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    # background points: never on the object, IoU target 0
    coords, _, target = sample_training_points(seg, 2, 2.0, foreground_fraction=0.0,
                                               generator=torch.Generator().manual_seed(1))
    cols, rows = ((coords[:, 0] + 0.5) / 2 - 0.5).round().long().unbind(-1)
    assert (seg[torch.arange(4), rows, cols] == 0).all() and not target.any()


def test_the_point_grid_is_sams():
    """SAM's build_point_grid (cell centres, x fastest) scaled to the input: what the official prompts with."""
    from segment_anything.utils.amg import build_point_grid
    grid = make_point_grid(9, 256)
    torch.testing.assert_close(grid, torch.from_numpy(build_point_grid(9) * 256).float())
    assert grid[1, 0] > grid[0, 0] and grid[1, 1] == grid[0, 1]


def test_loss_is_monais_dice_ce_with_squared_pred_worked_by_hand():
    """Logit 0 on two voxels (p = 0.5), target [1, 0]: squared-pred Dice 1 - (2 * 0.5 + s) / (0.25 + 0.25 + 1 + s),
    BCE ln 2, L1 of the IoU |0.2 - 1| (MONAI's DiceCELoss(sigmoid=True, squared_pred=True) + L1, as the official)."""
    logits = torch.zeros(1, 1, 1, 2)
    dice = 1 - (1 + SMOOTH) / (1.5 + SMOOTH)
    total, parts = DeSAMLoss()(logits, torch.tensor([[[1, 0]]]), torch.tensor([[0.2]]), torch.tensor([[1.0]]))
    assert parts["dice"] == pytest.approx(dice, abs=1e-7) and parts["bce"] == pytest.approx(math.log(2), abs=1e-6)
    assert parts["iou_l1"] == pytest.approx(0.8, abs=1e-7)
    assert float(total) == pytest.approx(dice + math.log(2) + 0.8, abs=1e-6)
    # a padding voxel (< 0) leaves both mask terms: Dice 1 - (1 + s) / (0.25 + 1 + s), BCE over one voxel
    total, parts = DeSAMLoss()(logits, torch.tensor([[[1, -1]]]))
    assert parts["dice"] == pytest.approx(1 - (1 + SMOOTH) / (1.25 + SMOOTH), abs=1e-7)
    assert parts["bce"] == pytest.approx(math.log(2), abs=1e-6) and "iou_l1" not in parts


def test_loss_is_monais_dice_ce_on_random_inputs():
    """Against MONAI itself (a dependency for the robustness study): DiceCELoss(sigmoid=True, squared_pred=True),
    the official's loss on its one mask channel, on random logits and labels. (With more channels MONAI takes a
    softmax cross-entropy; ours keeps one sigmoid per class, the mean of single-class losses tested below.)"""
    from monai.losses import DiceCELoss
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 7, 9, generator=g)
    seg = torch.randint(0, 2, (4, 7, 9), generator=g)
    target = (seg == 1).float()[:, None]
    total, _ = DeSAMLoss()(logits, seg)
    assert float(total) == pytest.approx(float(DiceCELoss(sigmoid=True, squared_pred=True)(logits, target)), abs=1e-6)


def test_loss_per_class_is_the_mean_of_single_class_losses():
    """C sigmoid channels: each class's Dice is its own (averaged over classes and slices), BCE over all voxels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, 6, generator=g)
    seg = torch.randint(0, 3, (3, 5, 6), generator=g)
    _, both = DeSAMLoss()(logits, seg)
    singles = [DeSAMLoss()(logits[:, c:c + 1], torch.where(seg == c + 1, 1, 0))[1] for c in range(2)]
    assert both["dice"] == pytest.approx(sum(s["dice"] for s in singles) / 2, abs=1e-6)
    assert both["bce"] == pytest.approx(sum(s["bce"] for s in singles) / 2, abs=1e-6)


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci, outcome):
    from conftest import require_shared
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="nothing_here: the fixture not found"):
        require_shared(tmp_path / "nothing_here", "the fixture")
    require_shared(tmp_path, "a folder that is there")  # present: neither
