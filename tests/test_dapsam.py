"""DAPSAM: equivalence with the official code (a fixture it made), its checkpoints, and the family registry."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import desam_nnu
from desam_nnu.model import DAPSAM, CheckpointError, DeSAM, build_dapsam, family_of, resize_abs_pos_embed
from test_model_checkpoints import SMALL, sam_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_dapsam_fixture", FIXTURES / "make_dapsam_fixture.py")
official = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official)


@pytest.fixture(scope="module")
def fixture():
    return np.load(FIXTURES / "dapsam_official_small.npz")


def _official_sized_net() -> DAPSAM:
    """Ours at the fixture's configuration, through the public API with the size-override names."""
    c = official.CONFIG
    return desam_nnu.build_network(
        "dapsam", "vit_b", image_size=c["image_size"], num_classes=c["num_classes"],
        encoder_embed_dim=c["encoder_embed_dim"], encoder_depth=c["encoder_depth"],
        encoder_num_heads=c["encoder_num_heads"], encoder_global_attn_indexes=c["encoder_global_attn_indexes"],
        window_size=14)


def test_matches_official_dapsam_logits_batch_1_and_2(fixture):
    net = _official_sized_net().eval()
    own = net.state_dict()
    assert sorted(own) == list(fixture["keys"]), "state-dict keys differ from the official layout"
    assert [",".join(map(str, own[k].shape)) for k in fixture["keys"]] == list(fixture["shapes"])
    state = official.fill_state({k: v.shape for k, v in own.items()})
    assert official.checksum(state) == pytest.approx(float(fixture["weight_checksum"]), rel=1e-12), \
        "the seeded weights differ from the ones the fixture was made with (torch's generator changed?)"
    desam_nnu.load_official(net, state)
    images = official.images()
    assert float(images.double().abs().sum()) == pytest.approx(float(fixture["image_checksum"]), rel=1e-12)
    expected1 = torch.from_numpy(fixture["low_res_batch1"])
    expected2 = torch.from_numpy(fixture["low_res_batch2"])
    assert expected2.std() > 0.05  # logits of order one: a wiring mistake shows far above the tolerance
    with torch.no_grad():
        low1 = net(images[:1], low_res=True)
        low2 = net(images[1:], low_res=True)
        masks2 = net(images[1:])
    assert low1.shape == (1, 1, 96, 96) and low2.shape == (2, 1, 96, 96) and masks2.shape == (2, 1, 384, 384)
    torch.testing.assert_close(low1, expected1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(low2, expected2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masks2[:, :, 200], torch.from_numpy(fixture["masks_batch2_row200"]), rtol=1e-5, atol=1e-5)
    # the batch of two is not two batches of one (the official's broadcasting and per-image gates)
    with torch.no_grad():
        torch.testing.assert_close(net(images[1:2], low_res=True), low2[:1], rtol=1e-5, atol=1e-5)


def test_official_state_dict_from_a_file_strictly(tmp_path):
    net = build_dapsam("tiny", image_size=64, num_classes=2)
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    path = tmp_path / "epoch_159.pth"
    torch.save(state, path)
    other = build_dapsam("tiny", image_size=64, num_classes=2)
    desam_nnu.load_official(other, str(path))
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v), k
    del state["prompt_generator.memory_bank.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"epoch_159.pth does not fit DAPSAM\(tiny.*missing keys 1 \(prompt_generator"):
        desam_nnu.load_official(other, str(path))
    with pytest.raises(CheckpointError, match="shape mismatches"):  # three classes' tokens into a 2-class model
        desam_nnu.load_official(other, build_dapsam("tiny", image_size=64, num_classes=3).state_dict())


def test_sam_checkpoint_initialises_as_the_official_load_from():
    sd = sam_state_dict(64, SMALL)  # SAM at 64 px: 4 x 4 tokens, 4 mask tokens
    sizes = {k: v for k, v in SMALL.items() if k != "pdmm_dim"}
    net = build_dapsam("tiny", image_size=128, num_classes=2, checkpoint=sd, **sizes)
    own = net.state_dict()
    assert torch.equal(own["image_encoder.pos_embed"], resize_abs_pos_embed(sd["image_encoder.pos_embed"], (8, 8)))
    assert torch.equal(own["image_encoder.blocks.1.attn.qkv.weight"], sd["image_encoder.blocks.1.attn.qkv.weight"])
    assert own["image_encoder.blocks.0.attn.rel_pos_h"].shape[0] == 15  # global block at 8 x 8 tokens: 2 * 8 - 1
    assert torch.equal(own["mask_decoder.transformer.layers.0.mlp.lin1.weight"],
                       sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"])
    assert own["mask_decoder.mask_tokens.weight"].shape == (2, 32)  # one per class, new (SAM has 4)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "image_encoder.blocks.0.channel_adapter.D_fc1.weight" in trainable
    assert "image_encoder.l_adapter.embedding_generator.weight" in trainable
    assert "image_encoder.blocks.0.attn.qkv.weight" not in trainable and "image_encoder.pos_embed" not in trainable
    assert {"prompt_generator.memory_bank.weight", "mask_decoder.mask_tokens.weight"} <= trainable
    groups = net.trainable_parameter_groups()
    assert sum(p.numel() for g in groups.values() for p in g) == sum(p.numel() for p in net.parameters() if p.requires_grad)
    del sd["image_encoder.neck.0.weight"]
    with pytest.raises(CheckpointError, match="missing keys 1 \\(image_encoder.neck.0.weight"):
        build_dapsam("tiny", image_size=128, checkpoint=sd, **sizes)


def test_registry_builds_each_family_with_one_call():
    images = torch.randn(2, 3, 64, 64)
    dapsam = desam_nnu.build_network("dapsam", "tiny", image_size=64, num_classes=3)
    desam = desam_nnu.build_network("desam", "tiny", image_size=64, num_classes=3, pretrained=False)
    assert isinstance(dapsam, DAPSAM) and isinstance(desam, DeSAM)
    assert family_of(dapsam).name == "dapsam" and family_of(desam).name == "desam"
    assert dapsam(images).shape == (2, 3, 64, 64) and dapsam(images, low_res=True).shape == (2, 3, 16, 16)
    with torch.device("meta"):  # shapes only: ViT-B at the official input size by default
        assert build_dapsam("vit_b").image_encoder.pos_embed.shape == (1, 24, 24, 768)
    with pytest.raises(ValueError, match="unknown network family 'unet'"):
        desam_nnu.build_network("unet", "tiny")
    with pytest.raises(ValueError, match="dapsam runs on .*'medsam_lite'.*not 'vit_x'"):
        desam_nnu.build_network("dapsam", "vit_x")
    with pytest.raises(TypeError, match=r"unknown size override\(s\) \['pdmm_dim'\]"):
        desam_nnu.build_network("dapsam", "tiny", pdmm_dim=32)
    with pytest.raises(TypeError, match="is not a network of any family"):
        desam_nnu.load_official(torch.nn.Linear(2, 2), {})


def test_medsam_lite_extension_starts_from_litemedsam_and_adds_only_adapters():
    """Ours (no official DAPSAM on TinyViT): LiteMedSAM's weights load, and with the adapters' last layers
    at zero the encoder is LiteMedSAM's TinyViT exactly, so the adapters are purely additive."""
    from desam_nnu.model import medsam_lite_checkpoint_path, read_state_dict
    from desam_nnu.model.tinyvit import TinyViTFeatureEncoder

    net = desam_nnu.build_network("dapsam", "medsam_lite", image_size=128, num_classes=2).eval()
    lite = read_state_dict(medsam_lite_checkpoint_path())
    own = net.state_dict()
    for key in ("image_encoder.layers.1.blocks.0.attn.qkv.weight", "image_encoder.neck.0.weight",
                "mask_decoder.transformer.layers.0.mlp.lin1.weight"):
        assert torch.equal(own[key], lite[key]), key
    assert not any("layers.0." in k and "adapter" in k for k in own)  # the convolutional stage is left as it is
    adapted = {k.split(".")[1] for k in own if k.startswith("image_encoder.l_adapter_")}
    assert adapted == {"l_adapter_1", "l_adapter_2", "l_adapter_3"}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "image_encoder.layers.2.blocks.5.channel_adapter.D_fc1.weight" in trainable
    assert "image_encoder.layers.2.blocks.5.mlp.fc1.weight" not in trainable
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert net(images, low_res=True).shape == (2, 2, 128, 128)  # TinyViT's S/4 tokens: logits at the input
        plain = TinyViTFeatureEncoder(128, feature_stages=())
        plain.load_state_dict({k[len("image_encoder."):]: v for k, v in lite.items() if k.startswith("image_encoder.")})
        plain.eval()
        before = net.image_encoder(images)
        for name, module in net.image_encoder.named_modules():
            if name.endswith(("D_fc2", ".2")) and "adapter" in name:
                module.weight.zero_()
                module.bias.zero_()
        torch.testing.assert_close(net.image_encoder(images), plain(images)[-1], rtol=1e-5, atol=1e-5)
    assert (before - plain(images)[-1]).abs().max() > 1e-3  # and with their initial weights they act
    # each block adapter read its MLP's normalised input from the LayerNorm's hook, and let go of it
    adapters = [m for n, m in net.image_encoder.named_modules() if n.endswith("channel_adapter")]
    assert len(adapters) == 10 and all(a.normed is None for a in adapters)
