"""DB-SAM's parts: deformable attention against a hand-written bilinear sampler and against the official code
(the fixture tests/fixtures/dbsam_official_small.npz, made by tests/fixtures/make_dbsam_fixture.py)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from desam_nnu.model.dbsam import (ConvBranch, FeatureFusion, MSDeformAttn, MSDeformCrossAttnBlock, build_dbsam,
                                   multi_scale_deformable_attention, reference_points, trainable_parameters)

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_dbsam_fixture", FIXTURES / "make_dbsam_fixture.py")
official = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official)  # its seeded weights and inputs (torch and numpy only)


def _bilinear_loop(value: np.ndarray, shapes, loc: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float64, one sample at a time: (x, y) in [0, 1] reads pixel (x W - 0.5, y H - 0.5), outside is zero."""
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = loc.shape
    out = np.zeros((n, lq, m, d))
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for b in range(n):
        for q in range(lq):
            for h_ in range(m):
                for lvl, (hh, ww) in enumerate(shapes):
                    v = value[b, starts[lvl]:starts[lvl + 1], h_].reshape(hh, ww, d)
                    for p in range(points):
                        px, py = loc[b, q, h_, lvl, p] * (ww, hh) - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                            for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                                if 0 <= yy < hh and 0 <= xx < ww:
                                    out[b, q, h_] += weights[b, q, h_, lvl, p] * wy * wx * v[yy, xx]
    return out.reshape(n, lq, m * d)


def test_deformable_attention_is_bilinear_sampling_with_zero_padding():
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (3, 3), (2, 1)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 3, 4, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 7, 3, 3, 2, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside the map
    weights = torch.rand(2, 7, 3, 3, 2, generator=g, dtype=torch.float64)
    out = multi_scale_deformable_attention(value, torch.tensor(shapes), loc, weights)
    assert out.shape == (2, 7, 12)
    np.testing.assert_allclose(out.numpy(), _bilinear_loop(value.numpy(), shapes, loc.numpy(), weights.numpy()),
                               atol=1e-12)


def test_reference_points_are_pixel_centres_level_after_level():
    ref = reference_points([(2, 3), (1, 1)])
    assert ref.shape == (1, 7, 1, 2)
    assert torch.allclose(ref[0, :3, 0], torch.tensor([[1 / 6, 1 / 4], [3 / 6, 1 / 4], [5 / 6, 1 / 4]]))
    assert torch.allclose(ref[0, 3, 0], torch.tensor([1 / 6, 3 / 4])) and torch.allclose(ref[0, 6, 0],
                                                                                      torch.tensor([0.5, 0.5]))


def test_official_parameter_counts_and_keys():
    """Counted on the official modules at width 768 (LFIP0 8,881,664; MultiConvFeatsDANE 5,314,560 with its
    unused conv_fc.4); the encoder's 526 state-dict entries; what trains."""
    assert sum(p.numel() for p in ConvBranch(3, 768, (1, 2, 3, 4)).parameters()) == 8_881_664
    assert sum(p.numel() for p in FeatureFusion(768, num_conv=5).parameters()) == 5_314_560
    net = build_dbsam()
    assert len([k for k in net.state_dict() if k.startswith("image_encoder.")]) == 526
    trainable = {id(p) for p in trainable_parameters(net)}
    names = [n for n, p in net.named_parameters() if id(p) in trainable]
    assert all(n.startswith(("image_encoder.adapter.", "image_encoder.neck.", "prompt_encoder.", "mask_decoder."))
               for n in names)
    assert any(n.startswith("prompt_encoder.") for n in names)
    assert not net.image_encoder.blocks[0].attn.qkv.weight.requires_grad


def test_deformable_attention_starts_on_a_ring_of_offsets_with_uniform_weights():
    attn = MSDeformAttn(96, n_levels=5, n_heads=12, n_points=4)
    bias = attn.sampling_offsets.bias.view(12, 5, 4, 2)
    assert torch.allclose(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]]))
    assert torch.allclose(bias[3, 2, 1], torch.tensor([0.0, 2.0]), atol=1e-6)  # head 3: 90 degrees
    assert torch.equal(bias[:, 0], bias[:, 4])  # the same ring at every level
    assert not attn.attention_weights.weight.any() and not attn.attention_weights.bias.any()


def test_a_block_keeps_each_level_and_mixes_across_levels():
    torch.manual_seed(0)
    blk = MSDeformCrossAttnBlock(16, 4, 3, 2, query_norm=True, ffn_pre_norm=True).eval()
    levels = [torch.randn(1, 16, 5, 5) for _ in range(3)]
    out = blk(levels, levels)
    assert [o.shape for o in out] == [lv.shape for lv in levels]
    changed = [lv.clone() for lv in levels]
    changed[2] += torch.randn(1, 16, 5, 5)  # another level's input moves the first level's output
    assert not torch.allclose(blk(changed, changed)[0], out[0])


def test_official_and_sam_state_dicts_load_strictly(tmp_path):
    from desam_nnu.model import CheckpointError
    from desam_nnu.model.dbsam import load_official_dbsam, load_sam_into_dbsam
    net, other = (build_dbsam(image_size=1024, encoder_embed_dim=48, encoder_num_heads=12) for _ in range(2))
    path = tmp_path / "dbsam.pth"
    torch.save({"net": other.state_dict(), "epoch": 3}, path)  # the official trainer's checkpoint layout
    load_official_dbsam(path, net)
    assert torch.equal(net.image_encoder.adapter.level_embed, other.image_encoder.adapter.level_embed)
    assert torch.equal(net.mask_decoder.iou_token.weight, other.mask_decoder.iou_token.weight)
    broken = dict(other.state_dict())
    broken.pop("image_encoder.adapter.norm.weight")
    with pytest.raises(CheckpointError, match="missing keys .*image_encoder.adapter.norm.weight"):
        load_official_dbsam(broken, net)
    sam = {k: v for k, v in other.state_dict().items() if ".adapter." not in k}
    before = net.image_encoder.adapter.aggregation.ffn.fc1.weight.clone()
    load_sam_into_dbsam(sam, net)  # SAM's ViT, neck, prompt encoder and decoder; the adapter untouched
    assert torch.equal(net.image_encoder.adapter.aggregation.ffn.fc1.weight, before)
    with pytest.raises(CheckpointError, match="missing keys .*image_encoder.neck"):
        load_sam_into_dbsam({k: v for k, v in sam.items() if not k.startswith("image_encoder.neck.")}, net)


# ------------------------------------------------------------------ against the official code (the fixture)
@pytest.fixture(scope="module")
def fixture():
    return np.load(official.OUT)


def _load_drawn(module: torch.nn.Module, f, prefix: str, seed: str) -> None:
    """The fixture's weights: its key list equals ours, then the same seeded draw, loaded."""
    own = module.state_dict()
    assert sorted(own) == sorted(f[f"{prefix}_keys"].tolist())
    drawn = official.fill_state({k: v.shape for k, v in own.items()}, official.SEEDS[seed])
    assert official.checksum(drawn) == pytest.approx(float(f[f"{prefix}_weight_checksum"]), rel=1e-12)
    module.load_state_dict(drawn, strict=False)  # num_batches_tracked is not drawn
    module.eval()


def test_core_and_initial_offsets_equal_the_official(fixture):
    value, shapes, loc, weights = official.core_inputs()
    assert np.array_equal(value.numpy(), fixture["core_value"])
    np.testing.assert_allclose(multi_scale_deformable_attention(value, shapes, loc, weights).numpy(),
                               fixture["core_out"], atol=1e-6)
    torch.manual_seed(0)
    np.testing.assert_allclose(MSDeformAttn(96, 5, 12, 4).sampling_offsets.bias.detach().numpy(),
                               fixture["init_offsets"], atol=1e-6)


@pytest.mark.parametrize("antialias, tag", [(True, "aa"), (False, "noaa")])
def test_conv_branch_equals_lfip0(fixture, antialias, tag):
    branch = ConvBranch(3, official.WIDTH, (1, 2, 3, 4), antialias=antialias)
    _load_drawn(branch, fixture, "lfip", "lfip_weights")
    with torch.no_grad():
        out = branch(official.lfip_input())
    stride = int(fixture["lfip_stride"])
    for i in (1, 2, 3, 4):
        np.testing.assert_allclose(out[f"c{i}"][:, ::stride, ::stride].numpy(), fixture[f"lfip_{tag}_c{i}"],
                                   atol=1e-5)
    np.testing.assert_allclose([float(out[f"c{i}"].double().sum()) for i in (1, 2, 3, 4)], fixture[f"lfip_{tag}_sum"],
                               rtol=1e-5, atol=1e-2)


def test_fusion_and_block_equal_the_official(fixture):
    fusion = FeatureFusion(official.WIDTH, num_conv=5)
    _load_drawn(fusion, fixture, "dane", "dane_weights")
    vit, convs = official.dane_inputs()
    with torch.no_grad():
        np.testing.assert_allclose(fusion(vit, convs).numpy(), fixture["dane_out"], atol=1e-5)
    block = MSDeformCrossAttnBlock(official.WIDTH, 12, 5, 4, query_norm=True, ffn_pre_norm=True)
    _load_drawn(block, fixture, "block", "block_weights")
    maps = official.block_inputs()
    with torch.no_grad():
        np.testing.assert_allclose(torch.stack(block(maps, maps)).numpy(), fixture["block_out"], atol=1e-5)


def test_whole_network_equals_the_official_adapted_sam(fixture):
    """The released configuration at width 96 (1024 px, 12 blocks, 12 heads): neck output and mask logits."""
    net = build_dbsam(image_size=1024, encoder_embed_dim=official.WIDTH, encoder_num_heads=12)
    _load_drawn(net, fixture, "model", "model_weights")
    image = official.model_image().permute(0, 3, 1, 2)  # HWC 0..255 -> [1, 3, 1024, 1024]
    with torch.no_grad():
        neck = net.encode(image)
        logits = net.decode(neck, torch.tensor(official.BOX))
    s, t = int(fixture["model_neck_stride"]), int(fixture["model_low_res_stride"])
    np.testing.assert_allclose(neck[..., ::s, ::s].numpy(), fixture["model_neck"], atol=1e-5)
    np.testing.assert_allclose(logits[..., ::t, ::t].numpy(), fixture["model_low_res"], atol=1e-5)
    np.testing.assert_allclose(logits[0, 0, 128].numpy(), fixture["model_low_res_row128"], atol=1e-5)
