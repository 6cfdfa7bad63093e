"""Builder, backbone table, encoder outputs, freezing, classes (desam_nnu.model)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import desam_nnu
from desam_nnu.model import BACKBONES, DeSAM, build_desam

REPO = Path(__file__).resolve().parents[1]

# backbone -> (PDMM input width, neck width, total image-encoder parameters in millions)
EXPECTED = {
    "tiny": (64, 64, None),
    "vit_b": (768, 256, 89.67),
    "vit_l": (1024, 256, 308.28),
    "vit_h": (1280, 256, 637.03),
}


@pytest.mark.parametrize("backbone", sorted(EXPECTED))
def test_backbone_builds_with_right_feature_shapes(backbone):
    """Full size (1024) on the meta device: no memory, shapes only."""
    width, neck, enc_params = EXPECTED[backbone]
    with torch.device("meta"):
        model = build_desam(backbone)
        feats = model.encode(torch.empty(2, 3, 1024, 1024))
        d = model.config["prompt_embed_dim"]
        # PRIM + PDMM (the prompt encoder's boolean indexing cannot run on meta tensors)
        emb, iou = model.prim(feats[-1], model.prompt_encoder.get_dense_pe(), torch.empty(2, 2, d), torch.empty(2, d, 64, 64))
        logits = model.pdmm(emb, [feats[i] for i in model.pdmm_feature_indices])
    assert [tuple(f.shape) for f in feats] == [(2, width, 64, 64)] * 3 + [(2, neck, 64, 64)]
    assert tuple(emb.shape) == (2, d, 64, 64) and tuple(iou.shape) == (2, 1)
    assert tuple(logits.shape) == (2, 1, 256, 256)  # 1/4 of the input
    assert model.pdmm.conv_blocks_context[0].block_init.conv1.weight.shape[1] == width
    if enc_params is not None:
        n = sum(p.numel() for p in model.image_encoder.parameters()) / 1e6
        assert n == pytest.approx(enc_params, abs=0.01)
    # Frozen encoders: only PRIM + PDMM train.
    assert model.trainable_parameter_count() == sum(
        p.numel() for m in (model.prim, model.pdmm) for p in m.parameters() if p.requires_grad
    )
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())


@pytest.mark.parametrize("backbone", ["vit_b", "vit_h"])
def test_encoder_and_prompt_encoder_keys_match_sam(backbone):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_desam(backbone).state_dict()
        sam = sam_model_registry[backbone]().state_dict()
    for prefix in ("image_encoder.", "prompt_encoder."):
        a = {k: tuple(v.shape) for k, v in ours.items() if k.startswith(prefix)}
        b = {k: tuple(v.shape) for k, v in sam.items() if k.startswith(prefix)}
        assert a == b
    # PRIM holds exactly SAM's transformer, tokens and IoU head.
    prim = {k[len("prim."):]: tuple(v.shape) for k, v in ours.items() if k.startswith("prim.")}
    sam_dec = {
        k[len("mask_decoder."):]: tuple(v.shape)
        for k, v in sam.items()
        if k.startswith("mask_decoder.") and not k.startswith(("mask_decoder.output_upscaling", "mask_decoder.output_hypernetworks"))
    }
    assert prim == sam_dec


def test_tiny_forward_small_image_and_lazy_package_exports():
    torch.manual_seed(0)
    model = desam_nnu.build_desam("tiny", image_size=128).eval()
    assert isinstance(model, DeSAM) and desam_nnu.build_desam is build_desam
    images = torch.rand(1, 3, 128, 128) * 255
    coords = torch.tensor([[[30.0, 40.0]], [[90.0, 100.0]], [[64.0, 64.0]]])
    with torch.no_grad():
        feats = model.encode(images)
        logits, iou = model(images, points=(coords, torch.ones(3, 1)))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 8, 8)] * 4
    assert tuple(logits.shape) == (3, 1, 32, 32) and tuple(iou.shape) == (3, 1)
    # a smaller image is zero-padded like SAM; a larger one is refused
    with torch.no_grad():
        assert model.encode(images[..., :100, :120])[0].shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="larger than"):
        model.encode(torch.zeros(1, 3, 256, 256))


def test_builder_validation():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_desam("vit_x")
    with pytest.raises(TypeError, match="encoder_dim"):
        build_desam("tiny", image_size=64, encoder_dim=3)
    with pytest.raises(ValueError, match="multiple"):
        build_desam("tiny", image_size=100)
    with pytest.raises(ValueError, match="num_classes"):
        build_desam("tiny", image_size=64, num_classes=0)
    assert set(BACKBONES) >= {"vit_b", "vit_l", "vit_h", "tiny"}


def test_overrides_change_sizes():
    m = build_desam("vit_b", image_size=64, encoder_embed_dim=32, encoder_depth=3, encoder_num_heads=2,
                    encoder_global_attn_indexes=(0, 1, 2), window_size=2, prompt_embed_dim=32,
                    decoder_mlp_dim=64, decoder_num_heads=4, iou_head_hidden_dim=16, pdmm_dim=32)
    assert len(m.pdmm.conv_blocks_context) == 2  # 3 global blocks -> 2 PDMM levels
    with torch.no_grad():
        feats = m.encode(torch.zeros(1, 3, 64, 64))
        logits, iou = m.decode(feats, points=torch.tensor([[10.0, 20.0]]))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 4)] * 2 + [(1, 32, 4, 4)]
    assert tuple(logits.shape) == (1, 1, 8, 8) and m.mask_size(feats) == (8, 8)
    assert m.prim.iou_prediction_head.layers[0].out_features == 16


def test_multiclass_outputs():
    torch.manual_seed(0)
    m = build_desam("tiny", image_size=64, num_classes=2).eval()
    assert m.num_classes == 2
    assert m.prim.iou_prediction_head.layers[-1].out_features == 4  # SAM's shape kept for C <= 4
    with torch.no_grad():
        feats = m.encode(torch.rand(1, 3, 64, 64) * 255)
        logits, iou = m.decode(feats, points=torch.tensor([[10.0, 20.0], [40.0, 30.0], [5.0, 5.0]]))
        grid = m.decode_grid(feats, torch.tensor([[10.0, 20.0], [40.0, 30.0], [5.0, 5.0]]), iou_thresh=-1e9, top_k=2)
    assert tuple(logits.shape) == (3, 2, 16, 16) and tuple(iou.shape) == (3, 2)
    assert tuple(grid.probabilities.shape) == (2, 16, 16) and tuple(grid.indices.shape) == (2, 2)
    assert m.pdmm.seg_outputs[-1].out_channels == 2
    assert build_desam("tiny", image_size=64, num_classes=6).prim.iou_prediction_head.layers[-1].out_features == 6


def test_deep_supervision_and_training_step():
    torch.manual_seed(0)
    m = build_desam("tiny", image_size=64)
    m.deep_supervision = True
    images = torch.rand(2, 3, 64, 64) * 255
    feats = m.encode(images)
    assert not any(f.requires_grad for f in feats)  # frozen encoder runs without autograd
    outs, iou = m.decode(feats, points=(torch.tensor([[[10.0, 20.0]], [[40.0, 30.0]]]), torch.ones(2, 1)))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 16, 16), (2, 1, 8, 8)]
    (sum(o.mean() for o in outs) + iou.mean()).backward()
    assert all(p.grad is None for p in m.image_encoder.parameters())
    assert all(p.grad is None for p in m.prompt_encoder.parameters())
    assert m.prim.iou_token.weight.grad is not None
    assert m.pdmm.mask_embedding_fusion.conv1.weight.grad is not None
    # trainable parameters all receive gradients (DDP-safe: nothing trainable is unused)
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    before = m.trainable_parameter_count()
    m.set_trainable(image_encoder=True)
    assert m.trainable_parameter_count() == before + sum(p.numel() for p in m.image_encoder.parameters())


def test_decoder_only_model():
    m = build_desam("tiny", image_size=64, with_image_encoder=False)
    assert m.image_encoder is None
    with pytest.raises(RuntimeError, match="without an image encoder"):
        m.encode(torch.zeros(1, 3, 64, 64))
    feats = [torch.randn(1, 64, 4, 4) for _ in range(4)]
    with torch.no_grad():
        logits, _ = m.decode(feats, boxes=torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    assert tuple(logits.shape) == (1, 1, 16, 16)


def test_model_package_does_not_import_nnunetv2():
    code = "import sys, desam_nnu.model; bad = [m for m in sys.modules if m.startswith('nnunetv2')]; assert not bad, bad"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
