"""Coarse-to-fine grid scoring (``desam_predict --coarse-grid``): which prompts it scores, and that what it keeps is
what the exact decode gives for those prompts."""
import pytest
import torch

from desam_nnu.model import build_desam, make_point_grid
from desam_nnu.model.coarse_grid import coarse_indices, coarse_to_fine_iou, grid_side, neighbour_indices

ATOL = 1e-5


def _rows_cols(idx: torch.Tensor, n: int):
    return sorted({int(i) // n for i in idx}), sorted({int(i) % n for i in idx})


def test_coarse_indices_take_every_other_row_and_column_and_the_edges():
    idx = coarse_indices(9)
    assert len(idx) == 25 and _rows_cols(idx, 9) == ([0, 2, 4, 6, 8], [0, 2, 4, 6, 8])
    idx = coarse_indices(4)  # an even side: the last row and column are added
    assert len(idx) == 9 and _rows_cols(idx, 4) == ([0, 2, 3], [0, 2, 3])
    assert coarse_indices(1).tolist() == [0]


def test_neighbours_stay_inside_the_grid():
    assert neighbour_indices(9, torch.tensor([0])).tolist() == [0, 1, 9, 10]
    assert neighbour_indices(9, torch.tensor([40])).tolist() == [30, 31, 32, 39, 40, 41, 48, 49, 50]
    assert len(neighbour_indices(9, torch.tensor([0, 1]))) == 6  # shared neighbours counted once
    with pytest.raises(ValueError, match="square grid"):
        grid_side(80)


def test_a_peak_between_coarse_points_is_found_and_unscored_prompts_are_minus_inf():
    n, peaks = 9, [(3, 5), (7, 1)]  # odd rows: neither is a coarse point
    r, c = torch.arange(n * n) // n, torch.arange(n * n) % n
    iou = torch.stack([1 - 0.1 * ((r - pr) ** 2 + (c - pc) ** 2).float() for pr, pc in peaks], 1)  # [81, 2]
    scored = []

    def score(idx):
        scored.append(idx.clone())
        return iou[idx]

    got = coarse_to_fine_iou(score, n * n, top_k=1, device=torch.device("cpu"))
    every = torch.cat(scored)
    assert len(every) == len(torch.unique(every)) <= 25 + 2 * 8  # no prompt twice; about half of the 81
    assert torch.equal(got[every], iou[every])
    unscored = torch.ones(n * n, dtype=torch.bool)
    unscored[every] = False
    assert unscored.any() and torch.all(got[unscored] == float("-inf"))
    assert got.argmax(0).tolist() == [pr * n + pc for pr, pc in peaks]


@torch.no_grad()
@pytest.mark.parametrize("top_k", [1, 2])
def test_grid_candidates_coarse_keep_the_best_scored_prompts_with_their_exact_masks(top_k):
    torch.manual_seed(3)
    m = build_desam("tiny", image_size=64, num_classes=2).eval()
    img = m.encode(torch.rand(1, 3, 64, 64) * 255)
    grid = make_point_grid(9, 64)
    logits, iou = m.decode(img, points=grid)  # every prompt, exactly
    prompts_seen = []
    hook = m.prim.register_forward_hook(lambda mod, args, out: prompts_seen.append(out[1].shape[0]))
    try:
        cand = m.grid_candidates(img, grid, top_k=top_k, prompts_per_batch=27, coarse=True)
    finally:
        hook.remove()
    scored = torch.isfinite(cand.prompt_iou[:, 0])
    assert torch.equal(scored, torch.isfinite(cand.prompt_iou[:, 1]))
    assert sum(prompts_seen[:-1]) == int(scored.sum()) < 81  # PRIM scored only these (the last call: kept masks)
    torch.testing.assert_close(cand.prompt_iou[scored], iou[scored], atol=ATOL, rtol=0)
    for c in range(2):
        order = torch.argsort(torch.where(scored, iou[:, c], torch.tensor(float("-inf"))), descending=True)
        assert cand.indices[:, c].tolist() == order[:top_k].tolist()
        for j in range(top_k):
            torch.testing.assert_close(cand.logits[j, c], logits[order[j], c], atol=ATOL, rtol=0)
    exact = m.grid_candidates(img, grid, top_k=top_k)
    assert torch.equal(exact.prompt_iou.isfinite(), torch.ones_like(scored)[:, None].expand(-1, 2))
