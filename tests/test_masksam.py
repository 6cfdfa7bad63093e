"""MaskSAM's parts against the official code (the fixture tests/fixtures/masksam_official_small.npz, made by
tests/fixtures/make_masksam_fixture.py from bxie9/MaskSAM at c6860c5): adapters, ViT, prompt side, network, loss."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from desam_nnu.model.masksam import (ClassifierMaskDecoder, SliceAdaptedTwoWayTransformer, SliceAdaptedViT,
                                     SliceConvAdapter, SliceMLPAdapter, SlicePromptEncoder, build_masksam,
                                     mask_boxes)

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_masksam_fixture", FIXTURES / "make_masksam_fixture.py")
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)


@pytest.fixture(scope="module")
def fixture():
    return np.load(FIXTURES / "masksam_official_small.npz")


def _ours(module: torch.nn.Module, fixture, prefix: str, seed: int) -> torch.nn.Module:
    """Our module with the official key list, then the same seeded draw, loaded strictly."""
    assert sorted(module.state_dict()) == list(fixture[f"{prefix}_keys"])
    shapes = [",".join(map(str, module.state_dict()[k].shape)) for k in sorted(module.state_dict())]
    assert shapes == list(fixture[f"{prefix}_shapes"])
    return maker.load_drawn(module, seed)


def test_adapters_equal_the_official(fixture):
    d, t, q = (maker.ADAPTER[k] for k in ("dim", "frames", "queries"))
    seed = maker.SEEDS["adapter_weights"]
    conv = _ours(SliceConvAdapter(d, num_frames=t, skip_connect=False), fixture, "conv", seed)
    conv_q = _ours(SliceConvAdapter(d, num_frames=t, num_queries=q, size=(5, 6)), fixture, "conv_q", seed)
    mlp_q = _ours(SliceMLPAdapter(d, num_frames=t, num_queries=q), fixture, "mlp_q", seed)
    x = maker.adapter_inputs()
    with torch.no_grad():
        got = {"conv_enc_grid": conv(x["enc_grid"]), "conv_q_grid": conv_q(x["grid"]),
               "conv_q_flat": conv_q(x["flat"]), "mlp_q_flat": mlp_q(x["flat"]), "mlp_q_grid": mlp_q(x["grid"])}
    for name, value in got.items():
        np.testing.assert_allclose(value.numpy(), fixture[name], atol=1e-5, err_msg=name)
    # the slice axis is real: moving one slice's tokens changes the others' outputs
    moved = x["flat"].clone()
    moved[0] += 1.0  # volume 0, slice 0, query 0
    with torch.no_grad():
        changed = (conv_q(moved) - got["conv_q_flat"]).abs().amax(dim=(1, 2))
    assert changed[q] > 1e-4 and changed[1] == 0  # slice 1 of the same query moves; query 1 of slice 0 does not


def test_adapters_refuse_a_batch_that_is_not_slices_times_queries():
    with pytest.raises(ValueError, match="not \\(volumes x 3 slices x 2 queries\\)"):
        SliceMLPAdapter(16, num_frames=3, num_queries=2)(torch.zeros(5, 4, 16))


def test_vit_equals_the_official_with_its_windows_quirks(fixture):
    """16 x 16 tokens in 14-token windows (padding, 4 windows a slice, adapters over consecutive windows), and a
    12 x 12 grid (the position embedding cropped, the global blocks' relative positions resized)."""
    v = maker.VIT
    vit = _ours(SliceAdaptedViT(v["num_frames"], depth=v["depth"], embed_dim=v["embed_dim"],
                                num_heads=v["num_heads"], global_attn_indexes=v["global_attn_indexes"],
                                img_size=v["img_size"]), fixture, "vit", maker.SEEDS["vit_weights"])
    with torch.no_grad():
        for name, image in maker.vit_inputs().items():
            levels = vit(image)
            assert len(levels) == 5
            b, _, t, s, _ = image.shape
            assert [tuple(m.shape) for m in levels] == [(b * t, v["embed_dim"], s // 16, s // 16)] * 4 + \
                [(b * t, 256, s // 16, s // 16)]
            for key, value in maker.vit_outputs(name, levels).items():
                np.testing.assert_allclose(value, fixture[key], atol=1e-4, rtol=1e-4, err_msg=key)
    with pytest.raises(ValueError, match="2 slices into an encoder built for T = 3"):
        vit(torch.zeros(1, 3, 2, 64, 64))


def test_prompt_side_equals_the_official(fixture):
    """Boxes and masks embedded, the slices' dense encoding (also in a larger frame, as the patch-256 variant),
    and the classifier mask decoder with its slice-mixing transformer."""
    d = maker.DECODER
    transformer = SliceAdaptedTwoWayTransformer(d["frames"], d["queries"], d["grid"], embedding_dim=d["dim"],
                                                num_heads=d["heads"], mlp_dim=d["mlp"])
    prompt_side = torch.nn.ModuleDict({
        "prompt_encoder": SlicePromptEncoder(d["dim"], d["grid"], d["input"], d["mask_in_chans"], d["frames"]),
        "mask_decoder": ClassifierMaskDecoder(transformer, d["classes"], transformer_dim=d["dim"])})
    _ours(prompt_side, fixture, "decoder", maker.SEEDS["decoder_weights"])
    pe = prompt_side["prompt_encoder"]
    with torch.no_grad():
        got = maker.run_prompt_side(prompt_side, pe.slice_dense_pe(d["frames"]), maker.decoder_inputs())
        got["dense_pe_frame"] = pe.slice_dense_pe(d["frames"], frame=d["frame"]).numpy()
    t, q = d["frames"], d["queries"]
    assert got["masks"].shape == (t * q, 1, 4 * d["grid"][0], 4 * d["grid"][1])
    assert got["classes"].shape == (t * q, d["classes"] + 1)
    for name, value in got.items():
        np.testing.assert_allclose(value, fixture[name], atol=1e-5, rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="not whole patches of 3"):
        pe.slice_dense_pe(4)


def test_mask_boxes_are_the_official_box_of_a_mask():
    """(min x / W, min y / H, max x / W, max y / H) of the pixels, no +1; an empty mask gives zeros."""
    masks = torch.zeros(2, 3, 8, 10)
    masks[0, 0, 2:5, 3:7] = 1  # rows 2..4, columns 3..6
    masks[0, 1, 7, 9] = 1
    masks[1, 2, 0, 0] = 1
    masks[1, 2, 6, 2] = 1
    got = mask_boxes(masks)
    assert got.shape == (2, 3, 2, 2)
    assert torch.equal(got[0, 0], torch.tensor([[3 / 10, 2 / 8], [6 / 10, 4 / 8]]))  # float32 divisions
    assert torch.equal(got[0, 1], torch.tensor([[9 / 10, 7 / 8], [9 / 10, 7 / 8]]))
    assert torch.equal(got[1, 2], torch.tensor([[0.0, 0.0], [2 / 10, 6 / 8]]))
    assert got[0, 2].abs().sum() == 0 and got[1, 0].abs().sum() == 0


def test_whole_network_equals_the_official(fixture):
    """The ACDC wrapper on a narrowed ViT: the training outputs (auxiliary masks and boxes, class logits, masks)
    and the semantic output, from the same seeded weights and patch; the shared skip is one module."""
    n = maker.NET
    net = build_masksam(n["channels"], n["classes"], n["frames"], n["patch"], embed_dim=n["embed_dim"],
                        depth=n["depth"], num_heads=n["num_heads"], global_attn_indexes=n["global_attn_indexes"])
    assert net.image_decoder_skips[1] is not net.image_decoder_skips_first[0]
    assert net.image_decoder_skips[1][0] is net.image_decoder_skips_first[0][0] is net.image_decoder_skips_second[0][0]
    _ours(net, fixture, "net", maker.SEEDS["net_weights"])
    x = maker.net_input()
    with torch.no_grad():
        outputs = net.outputs(x)
        semantic = net.semantic(outputs, 1)
    t, q, (h, w) = n["frames"], net.num_queries, n["patch"]
    assert outputs["pred_aux_masks"].shape == outputs["pred_masks"].shape == (t, q, h, w)
    assert outputs["pred_logits"].shape == (t, q, n["classes"] + 1) and semantic.shape == (1, n["classes"], t, h, w)
    got = maker.net_outputs(outputs, semantic)
    # float32 sums depend on the CPU's SIMD width: on the 2026-12-02 machine 2 of the 16384 mask logits moved
    # by 1.7e-4 from the fixture's machine; a wrong layer moves them by tenths (the float64 test below is exact)
    for name, value in got.items():
        np.testing.assert_allclose(value, fixture[name], atol=5e-4, rtol=1e-3, err_msg=name)
    with pytest.raises(ValueError, match="a patch of 128 x 128 into a MaskSAM built for 256 x 256"):
        net.outputs(torch.zeros(1, 1, t, 128, 128))


def test_patch256_variant_equals_the_official_in_float64(fixture):
    """The patch-256 wrapper (the Synapse trainer's: the patch fed to SAM as it is, its six-stage decoder, boxes in
    patch pixels with the top-left dense encoding, final_conv) on a ViT with windowed and global blocks, float64:
    auxiliary masks and boxes, class logits, masks and the semantic output to 1e-6."""
    from desam_nnu.model.masksam import MaskSAM256, build_masksam_256
    n = maker.NET256
    net = build_masksam_256(n["channels"], n["classes"], n["frames"], n["patch"], n["queries"],
                            embed_dim=n["embed_dim"], depth=n["depth"], num_heads=n["num_heads"],
                            global_attn_indexes=n["global_attn_indexes"])
    assert isinstance(net, MaskSAM256) and net.num_queries == 24
    maker.in_float64(_ours(net, fixture, "net256", maker.SEEDS["net256_weights"]))
    x = maker.net256_input()
    with torch.no_grad():
        outputs = net.outputs(x)
        semantic = net.semantic(outputs, 1)
    t, p = n["frames"], n["patch"]
    assert outputs["pred_masks"].shape == (t, 24, p, p) and semantic.shape == (1, n["classes"], t, p, p)
    for name, value in maker.net_outputs(outputs, semantic, prefix="net256_").items():
        np.testing.assert_allclose(value, fixture[name], atol=1e-6, rtol=1e-6, err_msg=name)
    boxes = outputs["pred_aux_bboxes"]
    assert float(boxes.min()) >= 0 and float(boxes.max()) <= 1  # in the patch's 0..1 frame


def test_loss_equals_the_official(fixture):
    """Targets per slice (labels present, masks, boxes as the official trainer makes them), the Hungarian
    matching and every loss term, from the same seeded outputs and the same random points."""
    from desam_nnu.trainers.masksam_loss import WEIGHTS, MaskSAMCriterion, match, slice_targets

    outputs, seg = maker.loss_inputs()
    targets = slice_targets(seg)
    assert np.array_equal(np.concatenate([t["labels"].numpy() for t in targets]), fixture["loss_labels"])
    assert np.array_equal(np.concatenate([t["bboxes"].numpy() for t in targets]), fixture["loss_bboxes"])
    torch.manual_seed(maker.SEEDS["loss_points"])
    indices = match(outputs, targets, maker.LOSS["num_points"])
    assert np.array_equal(np.concatenate([i.numpy() for i, _ in indices]), fixture["match_queries"])
    assert np.array_equal(np.concatenate([j.numpy() for _, j in indices]), fixture["match_targets"])
    for value in outputs.values():
        value.requires_grad_(True)
    torch.manual_seed(maker.SEEDS["loss_points"])
    total, terms = MaskSAMCriterion(maker.LOSS["classes"], num_points=maker.LOSS["num_points"])(outputs, targets)
    assert sorted(terms) == list(fixture["loss_names"])
    np.testing.assert_allclose([terms[k] for k in fixture["loss_names"]], fixture["loss_values"], rtol=1e-5)
    assert float(total.detach()) == pytest.approx(sum(WEIGHTS[k] * v for k, v in terms.items()), rel=1e-6)
    total.backward()
    assert all(float(v.grad.abs().sum()) > 0 for v in outputs.values())  # every output is trained


def test_forward_is_the_semantic_mixture_and_trains_end_to_end():
    """A small MaskSAM (64 px into SAM, 16 px patches, T = 2): forward is sum over queries of softmax(class)[:C]
    x sigmoid(mask); a loss on it reaches the stem, the adapters, the slice embeddings and the heads."""
    torch.manual_seed(0)
    net = build_masksam(1, 3, 2, (16, 16), embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(0, 1, 2, 3))
    x = torch.randn(2, 1, 2, 16, 16)
    probs = net(x)
    assert probs.shape == (2, 3, 2, 16, 16) and float(probs.min()) >= 0
    with torch.no_grad():
        out = net.outputs(x)
    mix = torch.einsum("nqc,nqhw->nchw", out["pred_logits"].softmax(-1)[..., :3], out["pred_masks"].sigmoid())
    np.testing.assert_allclose(probs.detach().numpy(), mix.reshape(2, 2, 3, 16, 16).transpose(1, 2).numpy(),
                               atol=1e-6)
    probs.sum().backward()
    for name in ("first_conv.0.convs.0.conv.weight", "sam_model.image_encoder.temporal_embedding",
                 "sam_model.image_encoder.blocks.0.Space_Adapter.T_DWconv.weight",
                 "sam_model.mask_decoder.classifier_embed_Adapter.weight", "residual_classifier.convs.0.conv.weight"):
        assert float(dict(net.named_parameters())[name].grad.abs().sum()) > 0, name
    with pytest.raises(ValueError, match="4x the token grid"):
        build_masksam(1, 3, 2, (32, 32), embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(0, 1, 2, 3),
                      image_size=64)


def test_medsam_lite_starts_from_litemedsam_and_trains_its_stage_adapters():
    """Ours: LiteMedSAM's TinyViT with a slice adapter per stage (last layer zero) and a zero slice embedding, so the
    untrained encoder gives LiteMedSAM's embedding of every slice; SAM's input is 2x the patch; the packaged
    weights fill the prompt encoder and mask decoder too."""
    from desam_nnu.model import BACKBONES, build_network, read_state_dict
    from desam_nnu.model.masksam import freeze_sam
    from desam_nnu.model.masksam.tinyvit import MaskSAMLite
    from desam_nnu.model.tinyvit import TinyViTFeatureEncoder, build_on_cpu

    torch.manual_seed(0)
    net = build_network("masksam", "medsam_lite", image_size=64, num_classes=1, num_frames=2, input_channels=1)
    assert isinstance(net, MaskSAMLite) and net.patch == (32, 32)
    packaged = read_state_dict(BACKBONES["medsam_lite"].packaged_checkpoint())
    own = net.state_dict()
    for key in ("mask_decoder.iou_token.weight", "prompt_encoder.point_embeddings.0.weight",
                "image_encoder.neck.0.weight"):
        torch.testing.assert_close(own[f"sam_model.{key}"], packaged[key], rtol=0, atol=0)
    lite = build_on_cpu(lambda: TinyViTFeatureEncoder(64))
    lite.load_state_dict({k[len("image_encoder."):]: v for k, v in packaged.items() if k.startswith("image_encoder.")})
    net.eval()
    lite.eval()
    images = torch.rand(1, 3, 2, 64, 64)
    with torch.no_grad():
        levels = net.sam_model.image_encoder(images)
        expected = lite.forward_features(images[0].transpose(0, 1))
    assert [tuple(v.shape[1:]) for v in levels] == [(128, 32, 32), (160, 16, 16), (320, 16, 16), (320, 16, 16),
                                                     (256, 16, 16)]
    torch.testing.assert_close(levels[-1], expected, rtol=1e-5, atol=1e-5)
    freeze_sam(net)
    net.train()
    assert not net.sam_model.image_encoder.layers[0].blocks[0].conv1.bn.training  # frozen BatchNorms keep LiteMedSAM's
    probs = net(torch.rand(1, 1, 2, 32, 32))
    assert probs.shape == (1, 2, 2, 32, 32)
    probs[:, 1].sum().backward()
    for name in ("sam_model.image_encoder.stage_adapters.3.D_fc2.weight", "sam_model.image_encoder.temporal_embedding",
                 "lite_skips.3.convs.0.conv.weight", "first_conv.0.convs.0.conv.weight"):
        param = dict(net.named_parameters())[name]
        assert param.requires_grad and float(param.grad.abs().sum()) > 0, name
    assert not dict(net.named_parameters())["sam_model.image_encoder.neck.0.weight"].requires_grad
