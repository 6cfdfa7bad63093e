"""SAM checkpoints: strict keys, clear errors, position-embedding resizing."""
import logging
from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from desam_nnu.model import (
    CheckpointError,
    CheckpointNotFoundError,
    build_desam,
    load_official_desam,
    load_sam_checkpoint,
    resize_abs_pos_embed,
    resize_rel_pos,
)

# A small ViT in the 'tiny' backbone's shape (window + global blocks).
SMALL = dict(encoder_embed_dim=32, encoder_depth=4, encoder_num_heads=2, encoder_global_attn_indexes=(0, 1, 2, 3),
             window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=4, iou_head_hidden_dim=32,
             pdmm_dim=32)
SMALL_GLOBAL = dict(SMALL, encoder_global_attn_indexes=(1, 2, 3, 5), encoder_depth=6)


def sam_state_dict(image_size: int, cfg=SMALL, seed: int = 0):
    """A genuine segment_anything Sam at a small size, random weights (incl. position tables)."""
    torch.manual_seed(seed)
    emb = image_size // 16
    d = cfg["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=16, embed_dim=cfg["encoder_embed_dim"], depth=cfg["encoder_depth"],
            num_heads=cfg["encoder_num_heads"], mlp_ratio=4, out_chans=d, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=cfg["window_size"], global_attn_indexes=cfg["encoder_global_attn_indexes"],
        ),
        prompt_encoder=PromptEncoder(embed_dim=d, image_embedding_size=(emb, emb),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=d, iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
            transformer=TwoWayTransformer(depth=2, embedding_dim=d, mlp_dim=cfg["decoder_mlp_dim"],
                                          num_heads=cfg["decoder_num_heads"]),
        ),
    )
    sd = sam.state_dict()
    for k in sd:  # SAM inits position tables to zero: randomise so that comparisons mean something
        if k.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            sd[k] = torch.randn_like(sd[k])
    return sd


def _same(model, sd, prefix_map):
    own = model.state_dict()
    for k, v in sd.items():
        for src, dst in prefix_map.items():
            if k.startswith(src):
                assert torch.equal(own[dst + k[len(src):]], v), k


def test_sam_checkpoint_loads(tmp_path, caplog):
    sd = sam_state_dict(64)
    path = tmp_path / "sam_small.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="desam_nnu"):
        model = build_desam("tiny", image_size=64, checkpoint=path, **SMALL)
    _same(model, sd, {"image_encoder.": "image_encoder.", "prompt_encoder.": "prompt_encoder.",
                      "mask_decoder.transformer.": "prim.transformer.", "mask_decoder.iou_token.": "prim.iou_token.",
                      "mask_decoder.mask_tokens.": "prim.mask_tokens.",
                      "mask_decoder.iou_prediction_head.": "prim.iou_prediction_head."})
    text = caplog.text
    assert "loaded SAM checkpoint" in text and "newly initialised: PDMM" in text
    assert "ignored 30 SAM mask-decoder tensors" in text
    assert not model.image_encoder.blocks[0].attn.qkv.weight.requires_grad  # still frozen


def test_sam_checkpoint_same_size_is_bit_exact_at_1024():
    sd = sam_state_dict(1024, SMALL_GLOBAL)
    model = build_desam("tiny", image_size=1024, **SMALL_GLOBAL)
    load_sam_checkpoint(sd, model)
    enc = model.image_encoder
    assert torch.equal(enc.pos_embed, sd["image_encoder.pos_embed"])
    assert torch.equal(enc.blocks[1].attn.rel_pos_h, sd["image_encoder.blocks.1.attn.rel_pos_h"])
    assert tuple(enc.blocks[1].attn.rel_pos_h.shape) == (127, 16)  # global block at 1024
    assert torch.equal(enc.blocks[0].attn.rel_pos_w, sd["image_encoder.blocks.0.attn.rel_pos_w"])


def test_sam_checkpoint_other_image_size_resizes_positions(caplog):
    sd = sam_state_dict(1024, SMALL_GLOBAL)
    model = build_desam("tiny", image_size=256, **SMALL_GLOBAL)
    with caplog.at_level(logging.INFO, logger="desam_nnu"):
        load_sam_checkpoint(sd, model)
    enc = model.image_encoder
    assert tuple(enc.pos_embed.shape) == (1, 16, 16, 32)
    assert tuple(enc.blocks[1].attn.rel_pos_h.shape) == (31, 16)  # global: 2 * 16 - 1
    assert tuple(enc.blocks[0].attn.rel_pos_h.shape) == (7, 16)  # windowed (4): unchanged
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, sd["image_encoder.blocks.0.attn.rel_pos_h"])
    assert torch.allclose(enc.pos_embed, resize_abs_pos_embed(sd["image_encoder.pos_embed"], (16, 16)))
    assert "resized position tables" in caplog.text
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 3, 256, 256) * 255)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16)] * 4


def test_position_resizing_functions():
    pos = torch.randn(1, 64, 64, 8)
    assert resize_abs_pos_embed(pos, (64, 64)) is pos  # identity: bit-exact
    small = resize_abs_pos_embed(pos, (16, 16))
    assert tuple(small.shape) == (1, 16, 16, 8)
    const = torch.full((1, 64, 64, 3), 2.5)
    assert torch.allclose(resize_abs_pos_embed(const, (20, 12)), torch.full((1, 20, 12, 3), 2.5))
    rel = torch.randn(127, 12)
    assert resize_rel_pos(rel, 127) is rel
    assert tuple(resize_rel_pos(rel, 31).shape) == (31, 12)
    ramp = torch.linspace(-1, 1, 127)[:, None].repeat(1, 4)
    out = resize_rel_pos(ramp, 31)
    assert torch.all(out[1:, 0] > out[:-1, 0])  # monotone stays monotone
    assert torch.allclose(out[15], torch.zeros(4), atol=1e-6)  # offset 0 stays at the centre


def test_missing_key_is_a_clear_error(tmp_path):
    sd = sam_state_dict(64)
    del sd["image_encoder.blocks.2.attn.qkv.weight"]
    del sd["prompt_encoder.no_mask_embed.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        build_desam("tiny", image_size=64, checkpoint=path, **SMALL)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "missing keys 2" in msg
    assert "image_encoder.blocks.2.attn.qkv.weight" in msg and "prompt_encoder.no_mask_embed.weight" in msg


def test_wrong_file_errors(tmp_path):
    sd = sam_state_dict(64)
    model = build_desam("tiny", image_size=64, **SMALL)
    # encoder of another size
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_sam_checkpoint(sd, build_desam("tiny", image_size=64, **dict(SMALL, encoder_embed_dim=48)))
    # stray keys
    with pytest.raises(CheckpointError, match=r"unexpected keys 1 \(foo.bar\)"):
        load_sam_checkpoint(dict(sd, **{"foo.bar": torch.zeros(1)}), model)
    # an official DeSAM file is not a SAM file
    with pytest.raises(CheckpointError, match="load_official_desam"):
        load_sam_checkpoint(dict(sd, **{"mask_decoder.pimm.x": torch.zeros(1)}), model)
    # a SAM file is not an official DeSAM file
    with pytest.raises(CheckpointError, match="is this a SAM checkpoint"):
        load_official_desam(sd, model)
    # many missing keys: first few named, plus the count
    bad = {k: v for k, v in sd.items() if not k.startswith("image_encoder.blocks")}
    with pytest.raises(CheckpointError, match=r"missing keys \d+ \(.*\.\.\. \(\+\d+ more\)\)"):
        load_sam_checkpoint(bad, model)


def test_corrupt_and_missing_files(tmp_path):
    model = build_desam("tiny", image_size=64, **SMALL)
    garbage = tmp_path / "sam_vit_b_01ec64.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*sam_vit_b_01ec64.pth") as err:
        load_sam_checkpoint(garbage, model)
    assert "\n" not in str(err.value)
    good = tmp_path / "good.pth"
    torch.save(sam_state_dict(64), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_sam_checkpoint(truncated, model)
    not_sd = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_sam_checkpoint(not_sd, model)
    missing = tmp_path / "nowhere" / "sam_vit_h_4b8939.pth"
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found: .*nowhere/sam_vit_h_4b8939.pth"):
        build_desam("tiny", image_size=64, checkpoint=missing, **SMALL)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_prim_shape_mismatch_is_newly_initialised(caplog):
    """More than 4 classes: the IoU head's last layer cannot come from SAM; the rest does."""
    sd = sam_state_dict(64)
    model = build_desam("tiny", image_size=64, num_classes=5, **SMALL)
    with caplog.at_level(logging.INFO, logger="desam_nnu"):
        load_sam_checkpoint(sd, model)
    assert "prim.iou_prediction_head.layers.2.weight" in caplog.text and "newly initialised" in caplog.text
    assert torch.equal(model.prim.iou_prediction_head.layers[0].weight, sd["mask_decoder.iou_prediction_head.layers.0.weight"])
    assert model.prim.iou_prediction_head.layers[2].weight.shape[0] == 5


def test_decoder_only_model_takes_sam_file():
    sd = sam_state_dict(64)
    model = build_desam("tiny", image_size=64, with_image_encoder=False, **SMALL)
    load_sam_checkpoint(sd, model)
    assert torch.equal(model.prim.iou_token.weight, sd["mask_decoder.iou_token.weight"])
