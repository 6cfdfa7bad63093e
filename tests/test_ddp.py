"""Training on two processes with torch.distributed (gloo on the CPU), tiny backbone: the ranks stay equal, only
rank 0 writes, the cache is built once in shares, and one step of 2 x 4 items equals one step of 1 x 8."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_json
from conftest import planned_tiny_dataset
from test_model_checkpoints import sam_state_dict
from test_train_devices import TINY_SAM

from desam_nnu.cli.train import main, train
from desam_nnu.frozen_encoder import expand_weights
from desam_nnu.trainers.batches import _Batches
from desam_nnu.trainers.distributed import spawn

RESULT = "DeSAMTrainer__DeSAMPlans__desam_2d"
BATCH = 8
ENCODER_KEY = "image_encoder.patch_embed.proj.weight"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Dataset008 planned and preprocessed once for the module (tiny backbone, 64 px input)."""
    yield from planned_tiny_dataset(tmp_path_factory, 8, 5, (6, 40, 48))


def _preprocessed() -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / "Dataset008_Synth"


def _trained_parameters(network: torch.nn.Module) -> dict:
    return {k: p.detach().clone() for k, p in network.named_parameters() if p.requires_grad}


def _train_and_keep(out: str, kwargs: dict) -> None:
    """One rank: desam_train's function, then this rank's trained parameters to ``out``."""
    t = train(**kwargs)
    kept = dict(_trained_parameters(t.bare_network), **{ENCODER_KEY: t.bare_network.state_dict()[ENCODER_KEY]})
    torch.save(kept, os.path.join(out, f"rank{dist.get_rank()}.pt"))


def test_two_processes_train_as_one_model_and_rank_0_writes(prepared, tmp_path):
    """With a SAM checkpoint loaded into the DDP-wrapped network: both ranks hold its encoder, the saved keys have
    no wrapper prefix."""
    out = prepared / "nnUNet_results" / "Dataset008_Synth" / RESULT / "fold_0"
    sam = sam_state_dict(64, TINY_SAM, seed=5)
    torch.save(sam, tmp_path / "sam_tiny.pth")
    spawn(2, "cpu", _train_and_keep, str(tmp_path),
          dict(dataset=8, fold=0, device="cpu", epochs=2, iterations_per_epoch=3, val_iterations=1, use_cache=True,
               sam_checkpoint=str(tmp_path / "sam_tiny.pth")))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0] and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # identical after 6 steps
    assert torch.equal(ranks[0][ENCODER_KEY], sam[ENCODER_KEY])
    saved = torch.load(out / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved)
    final = expand_weights(saved, str(out.parent), "checkpoint_final.pth")
    assert all(torch.equal(final[k], ranks[0][k]) for k in ranks[0])
    (log,) = out.glob("training_log_*.txt")  # one log: rank 0's
    assert "Epoch 1" in log.read_text()
    assert (out / "validation" / "summary.json").is_file()
    # the cache was built once, each rank encoding its share, and holds every case
    (cache,) = (_preprocessed() / "desam_cache").iterdir()
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [f"case_{i:03d}" for i in range(5)]


def _box_trainer():
    """DeSAMTrainer on whole-slice boxes (no random prompts), online features, no augmentation, initialised."""
    from desam_nnu.trainers.desam_trainer import DeSAMTrainer
    plans = dict(load_json(_preprocessed() / "DeSAMPlans.json"), continue_training=False)  # as desam_train passes
    t = DeSAMTrainer(plans=plans, configuration="desam_2d", fold=0,
                     dataset_json=load_json(_preprocessed() / "dataset.json"), device=torch.device("cpu"))
    t.prompt_mode, t.use_cache, t.augment_online = "box", False, False
    t.initialize()
    return t


def _one_step(out: str, batch: dict) -> None:
    """One training step on this rank's half of ``batch`` (all of it without a process group)."""
    t = _box_trainer()
    if dist.is_initialized():
        half = slice(dist.get_rank() * BATCH // 2, (dist.get_rank() + 1) * BATCH // 2)
        batch = {k: v[half] if torch.is_tensor(v) else v for k, v in batch.items()}
    loss = float(t.train_step(batch)["loss"])
    grads = {k: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()  # box prompts: no IoU head
             for k, p in t.bare_network.named_parameters() if p.requires_grad}
    rank = dist.get_rank() if dist.is_initialized() else "single"
    torch.save({"weights": _trained_parameters(t.bare_network), "grads": grads, "loss": loss},
               os.path.join(out, f"step_{rank}.pt"))


def test_one_step_of_2x4_items_equals_one_step_of_1x8(prepared, tmp_path):
    t = _box_trainer()
    dataset, tr_keys, _ = t._index_items()
    t.batch_size = BATCH
    batch = next(_Batches(t, dataset, tr_keys[:1], np.random.default_rng(0), online=True))  # one case: equal padding
    batch = {"images": batch["images"], "seg": batch["seg"], "features": None, "generator": None}
    _one_step(str(tmp_path), batch)
    spawn(2, "cpu", _one_step, str(tmp_path), batch)
    single, r0, r1 = (torch.load(tmp_path / f"step_{r}.pt") for r in ("single", 0, 1))
    assert r0["loss"] != r1["loss"] and np.isclose((r0["loss"] + r1["loss"]) / 2, single["loss"], rtol=1e-5)
    for k, g in single["grads"].items():
        assert torch.equal(r0["grads"][k], r1["grads"][k]), k  # averaged: the same on both ranks
        assert torch.allclose(r0["grads"][k], g, rtol=1e-4, atol=1e-7), k
    # Adam's first step is lr g / (|g| + 1e-8): where |g| is near 1e-8, the fp32 summation order of the two
    # gradients moves the update by a fraction of lr (1e-4): 2 of 0.47M weights by up to 6e-6 here
    for k, w in single["weights"].items():
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
        assert torch.allclose(r0["weights"][k], w, rtol=1e-5, atol=2e-5), k


@pytest.mark.parametrize("args, message", [
    (["-num_gpus", "0"], "-num_gpus 0: use 1 or more"),
    (["-num_gpus", "2", "--cache-only"], "--cache-only splits with -num_parts/-part_id"),
    (["-num_gpus", "2", "-device", "cuda"], "GPU(s) visible"),
])
def test_bad_process_counts_are_one_line(prepared, capsys, args, message):
    if "cuda" in args and torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs are visible here")
    assert main(["8", "0"] + args) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
