"""The trainer on nnU-Net's CUDA path: torch.compile wrapping, SAM checkpoints loaded and saved by key.

nnU-Net 2.8.1 wraps ``self.network`` in ``torch.compile`` on CUDA unless ``nnUNet_compile`` is set.
The CPU tests force that wrapping, so the CUDA path's key handling is tested on every machine; the
CUDA test runs a real training step and the final validation (a prediction) where a GPU is.
"""
import os

import pytest
import torch
from conftest import planned_tiny_dataset
from test_model_checkpoints import sam_state_dict
from torch._dynamo import OptimizedModule

from desam_nnu.cli.train import train
from desam_nnu.frozen_encoder import expand_weights
from desam_nnu.model import build_desam
import desam_nnu.trainers
from desam_nnu.trainers.desam_trainer import DeSAMTrainer

# the 'tiny' backbone's shape (desam_nnu.model.backbones) as a SAM checkpoint's sizes
TINY_SAM = dict(encoder_embed_dim=64, encoder_depth=8, encoder_num_heads=4, encoder_global_attn_indexes=(1, 3, 5, 7),
                window_size=8, prompt_embed_dim=64, decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64)
FOLD = "Dataset007_Synth/DeSAMTrainer__DeSAMPlans__desam_2d/fold_0"


class CompilingTrainer(DeSAMTrainer):
    """nnU-Net's CUDA default on any device: the network wrapped in torch.compile before the SAM weights load."""

    def _do_i_compile(self) -> bool:
        return True


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Dataset007 planned for the tiny backbone, and a SAM checkpoint of its shape (random weights)."""
    for root in planned_tiny_dataset(tmp_path_factory, 7, 5, (4, 32, 40)):
        sam = sam_state_dict(64, TINY_SAM, seed=3)
        torch.save(sam, root / "sam_tiny.pth")
        yield root, sam


def _assert_sam_weights_and_plain_keys(trainer: DeSAMTrainer, sam: dict, checkpoint) -> None:
    """The frozen encoder holds the SAM file's weights; nnU-Net's checkpoint has DeSAM's own keys, no prefix."""
    net = trainer.bare_network
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.blocks.7.attn.rel_pos_h",
                "image_encoder.neck.0.weight"):
        torch.testing.assert_close(net.state_dict()[key].cpu(), sam[key], rtol=0, atol=0)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    assert not any(k.startswith("_orig_mod.") for k in saved)
    # a slim checkpoint: the frozen encoder comes from the model folder (desam_nnu.frozen_encoder)
    full = expand_weights(saved, os.path.dirname(os.path.dirname(checkpoint)), str(checkpoint))
    assert set(full) == set(build_desam("tiny", image_size=64, num_classes=2).state_dict())
    torch.testing.assert_close(saved["prim.iou_token.weight"], net.prim.iou_token.weight.detach().cpu())


def test_desam_trainer_never_compiles_on_cuda(monkeypatch):
    """Even where nnU-Net would (CUDA, nnUNet_compile=t), the network stays unwrapped."""
    monkeypatch.setenv("nnUNet_compile", "t")
    stub = DeSAMTrainer.__new__(DeSAMTrainer)
    logged = []
    stub.print_to_log_file = lambda *a, **k: logged.append(" ".join(map(str, a)))
    stub.device = torch.device("cuda", 0)
    assert DeSAMTrainer._do_i_compile(stub) is False
    assert "torch.compile stays off" in logged[0]


def test_a_compiled_network_loads_the_sam_checkpoint_and_saves_plain_keys(planned, monkeypatch):
    root, sam = planned
    found = desam_nnu.trainers.find_trainers()
    monkeypatch.setattr(desam_nnu.trainers, "find_trainers", lambda: {**found, "CompilingTrainer": CompilingTrainer})
    t = train(7, 0, trainer="CompilingTrainer", sam_checkpoint=str(root / "sam_tiny.pth"), device="cpu", epochs=1,
              iterations_per_epoch=2, val_iterations=1, use_cache=False)
    assert isinstance(t.network, OptimizedModule) and not isinstance(t.bare_network, OptimizedModule)
    fold = root / "nnUNet_results" / FOLD.replace("DeSAMTrainer", "CompilingTrainer")
    _assert_sam_weights_and_plain_keys(t, sam, fold / "checkpoint_final.pth")
    assert not any(p.requires_grad for p in t.bare_network.image_encoder.parameters())
    assert (fold / "validation" / "summary.json").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CUDA training step and "
                                                         "prediction run where a GPU is")
def test_cuda_trains_a_step_with_amp_and_predicts(planned, monkeypatch):
    """nnU-Net's CUDA defaults (compile requested, AMP with its grad scaler) with a SAM checkpoint."""
    root, sam = planned
    monkeypatch.delenv("nnUNet_compile", raising=False)
    t = train(7, 0, sam_checkpoint=str(root / "sam_tiny.pth"), device="cuda", epochs=1, iterations_per_epoch=2,
              val_iterations=1, use_cache=False)
    assert t.device.type == "cuda" and t.grad_scaler is not None and not isinstance(t.network, OptimizedModule)
    assert next(t.bare_network.parameters()).device.type == "cuda"
    fold = root / "nnUNet_results" / FOLD
    _assert_sam_weights_and_plain_keys(t, sam, fold / "checkpoint_final.pth")
    assert len(list((fold / "validation").glob("*.nii.gz"))) == 1  # fold 0 of 5 cases: one validation case
