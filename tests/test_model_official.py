"""Equivalence with the official DeSAM (github yifangao112/DeSAM), from a fixture of its outputs."""
from pathlib import Path

import pytest
import torch

from conftest import require_shared

from desam_nnu import build_desam, load_official_desam
from desam_nnu.model import CheckpointError, load_checkpoint

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official_desam_small.pt"
ATOL = 1e-4


def _overrides(cfg):
    return dict(
        image_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        encoder_embed_dim=cfg["enc_dim"],
        encoder_depth=cfg["enc_depth"],
        encoder_num_heads=cfg["enc_heads"],
        encoder_global_attn_indexes=tuple(cfg["global_attn_indexes"]),
        window_size=cfg["window_size"],
        prompt_embed_dim=cfg["prompt_dim"],
        decoder_depth=cfg["dec_depth"],
        decoder_mlp_dim=cfg["dec_mlp"],
        decoder_num_heads=cfg["dec_heads"],
        iou_head_hidden_dim=cfg["prompt_dim"],
        pdmm_dim=cfg["up_dim"],
    )


@pytest.fixture(scope="module")
def fx():
    require_shared(FIXTURE, "the official DeSAM fixture")
    return torch.load(FIXTURE, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def model_and_features(fx):
    model = build_desam("vit_b", **_overrides(fx["config"]))
    assert load_official_desam(fx["state_dict"], model) is model
    model.eval()
    with torch.no_grad():
        feats = model.encode(fx["image"])
    return model, feats


def test_features_match(fx, model_and_features):
    _, feats = model_and_features
    assert len(feats) == len(fx["features"]) == 4
    for ours, ref in zip(feats, fx["features"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_points_in_one_batched_call_match(fx, model_and_features):
    model, feats = model_and_features
    with torch.no_grad():
        logits, iou = model.decode(feats, points=(fx["point_coords"], fx["point_labels"]))
    assert logits.shape == fx["mask_logits_points"].shape == (5, 1, 64, 64)
    torch.testing.assert_close(logits, fx["mask_logits_points"], atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, fx["iou_points"], atol=ATOL, rtol=0)


def test_box_matches(fx, model_and_features):
    model, feats = model_and_features
    with torch.no_grad():
        logits, iou = model.decode(feats, boxes=fx["box"])
    torch.testing.assert_close(logits, fx["mask_logits_box"], atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, fx["iou_box"], atol=ATOL, rtol=0)


def test_training_layout_matches(fx, model_and_features):
    """B copies of the image, one prompt each (how training batches slices)."""
    model, feats = model_and_features
    batch = [f.expand(5, -1, -1, -1) for f in feats]
    with torch.no_grad():
        logits, iou = model.decode(batch, points=(fx["point_coords"], fx["point_labels"]))
    torch.testing.assert_close(logits, fx["mask_logits_points"], atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, fx["iou_points"], atol=ATOL, rtol=0)


def test_grid_mode_top1_is_best_official_mask(fx, model_and_features):
    model, feats = model_and_features
    with torch.no_grad():
        res = model.decode_grid(feats, (fx["point_coords"], fx["point_labels"]), iou_thresh=-1e9, top_k=1)
    best = int(fx["iou_points"][:, 0].argmax())
    assert not res.empty and int(res.indices[0, 0]) == best
    torch.testing.assert_close(res.mask_logits, fx["mask_logits_points"][best], atol=ATOL, rtol=0)


def test_official_checkpoint_file_and_autodetect(fx, tmp_path):
    path = tmp_path / "desam_model_best.pth"
    torch.save(fx["state_dict"], path)  # what the official training scripts save
    model = build_desam("vit_b", checkpoint=path, **_overrides(fx["config"])).eval()
    with torch.no_grad():
        logits, iou = model.decode(model.encode(fx["image"]), boxes=fx["box"])
    torch.testing.assert_close(logits, fx["mask_logits_box"], atol=ATOL, rtol=0)
    # our own layout round-trips through load_checkpoint
    other = build_desam("vit_b", **_overrides(fx["config"]))
    load_checkpoint(model.state_dict(), other)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_official_import_is_strict(fx):
    cfg = _overrides(fx["config"])
    sd = dict(fx["state_dict"])
    del sd["mask_decoder.pimm.seg_outputs.1.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys 1 \(pdmm.seg_outputs.1.weight\)"):
        load_official_desam(sd, build_desam("vit_b", **cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official_desam(fx["state_dict"], build_desam("vit_b", **{**cfg, "pdmm_dim": 32}))
    sd = dict(fx["state_dict"], **{"mask_decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys 1 \\(mask_decoder.extra.weight\\)"):
        load_official_desam(sd, build_desam("vit_b", **cfg))
