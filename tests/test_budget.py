"""Training within a time budget: the learning rate over the budget, the cache build inside it, the
cache-or-online choice, and nnU-Net's augmentation on online batches."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import planned_tiny_dataset

from desam_nnu.cli.train import train
from desam_nnu.trainers import time_budget
from desam_nnu.trainers.batches import _Batches
from desam_nnu.trainers.desam_trainer import DeSAMTrainer
from desam_nnu.trainers.features import choose_features
from desam_nnu.trainers.time_budget import BudgetPolyLRScheduler

STEP_S = 10.0  # fake seconds per training step


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Dataset012 planned once for the module (tiny backbone, 64 px input)."""
    yield from planned_tiny_dataset(tmp_path_factory, 12, 5, (8, 40, 48))


@pytest.fixture()
def fake_clock(prepared, monkeypatch):
    """The budget's wall clock made a counter that only training steps advance (STEP_S each)."""
    shutil.rmtree(prepared / "nnUNet_results", ignore_errors=True)
    (prepared / "nnUNet_results").mkdir()
    now = [1000.0]
    monkeypatch.setitem(time_budget.CLOCKS, "wall", lambda: now[0])
    monkeypatch.delenv("DESAM_BUDGET_CLOCK", raising=False)
    step = DeSAMTrainer.train_step

    def timed_step(self, batch):
        now[0] += STEP_S
        return step(self, batch)

    monkeypatch.setattr(DeSAMTrainer, "train_step", timed_step)
    return now


def _log(t) -> str:
    return Path(t.log_file).read_text()


def test_poly_schedule_over_the_budget_reaches_its_final_value_when_the_budget_ends():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    elapsed = [0.0]
    sched = BudgetPolyLRScheduler(opt, 1e-4, 200.0, lambda: elapsed[0])
    for t, expected in ((0.0, 1e-4), (100.0, 1e-4 * 0.5 ** 0.9), (190.0, 1e-4 * 0.05 ** 0.9), (200.0, 0.0),
                        (260.0, 0.0)):
        elapsed[0] = t
        sched.step(7)  # nnU-Net passes the epoch: ignored, the clock decides
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12), t


def test_training_fits_the_budget_with_the_rate_decaying_over_it(fake_clock):
    """200 s, 2 steps of 10 s per epoch: 10 epochs fit exactly; each starts at the rate its time says."""
    t = train(12, 0, device="cpu", iterations_per_epoch=2, val_iterations=1, use_cache=False,
              time_budget=200 / 60)
    assert t.current_epoch == 10 and t.num_epochs > 10  # the budget ended it, not the epoch count
    lrs = [t.logger.get_value("lrs", step=e) for e in range(10)]
    expected = [1e-4 * (1 - 20 * e / 200) ** 0.9 for e in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert t.lr_scheduler.elapsed() == 200.0  # spent exactly the budget: the next step's rate would be 0
    t.lr_scheduler.step()
    assert t.optimizer.param_groups[0]["lr"] == 0.0
    spent = re.search(r"Budget spent: (.*)", _log(t)).group(1).strip()
    assert spent.startswith("200 s of 200 s:") and "training (batches and steps) 200 s" in spent
    # the fake clock runs outside the step, so its seconds are the batches' and the step's parts take none
    assert spent.endswith("20 iterations, 10.00 s each; per iteration: batches 10.00 s, forward and loss 0.00 s "
                          "(the encoder 0.00 s), backward and optimizer 0.00 s")


def test_a_last_epoch_that_would_not_fit_is_shortened_to_what_does(fake_clock):
    """230 s, epochs of 4 steps of 10 s: 5 whole epochs (200 s), then one of the 2 steps that fit 90% of
    the 30 s left, then the run stops; 20 s idle at whole epochs would have been 10 s here."""
    t = train(12, 0, device="cpu", iterations_per_epoch=4, val_iterations=1, use_cache=False, time_budget=230 / 60)
    assert t.current_epoch == 6
    log = _log(t)
    assert "the last epoch shortened to 2 of 4 iterations (1 of 1 pseudo-validation), 200 s spent" in log
    assert "stopping after 6 epoch(s) (220 s spent; the shortened last epoch done)" in log
    assert re.search(r"Budget spent: 220 s of 230 s: .*; 22 iterations, 10.00 s each;", log)
    lr_last = t.logger.get_value("lrs", step=5)
    assert lr_last == pytest.approx(1e-4 * (1 - 200 / 230) ** 0.9, rel=1e-6)  # the clock's rate, as every epoch


def test_the_budget_line_splits_a_training_iteration_into_its_parts(prepared):
    """On the real clock: batches, forward and loss (of it the frozen encoder, online), backward and optimizer,
    each per iteration, adding up to the seconds per iteration."""
    shutil.rmtree(prepared / "nnUNet_results", ignore_errors=True)
    t = train(12, 0, device="cpu", epochs=1, iterations_per_epoch=3, val_iterations=2, use_cache=False)
    m = re.search(r"; 3 iterations, ([\d.]+) s each; per iteration: batches ([\d.]+) s, forward and loss ([\d.]+) s "
                  r"\(the encoder ([\d.]+) s\), backward and optimizer ([\d.]+) s", _log(t))
    each, batches, forward, encoder, backward = map(float, m.groups())
    assert forward > 0 and backward > 0 and 0 <= encoder <= forward  # the validation's encoder runs are not counted
    # the line rounds to 10 ms, which a tiny encoder on a fast CPU can fall under: its seconds were counted all the same
    parts = t._step_parts
    assert 0 < parts["encoder"] <= parts["forward and loss"]
    assert encoder == pytest.approx(parts["encoder"] / 3, abs=0.006)
    assert batches + forward + backward == pytest.approx(each, abs=0.02)


def test_the_budget_includes_the_cache_build(prepared, fake_clock, monkeypatch):
    """A 150-s cache build leaves room for 2 of the 10 epochs of 20 s."""
    shutil.rmtree(prepared / "nnUNet_preprocessed" / "Dataset012_Synth" / "desam_cache", ignore_errors=True)
    from desam_nnu.cache import EmbeddingCache
    build = EmbeddingCache.build

    def slow_build(self, cases, *args, **kwargs):
        fake_clock[0] += 150.0
        return build(self, cases, *args, **kwargs)

    monkeypatch.setattr(EmbeddingCache, "build", slow_build)
    t = train(12, 0, device="cpu", iterations_per_epoch=2, val_iterations=1, use_cache=True, time_budget=200 / 60)
    assert t.current_epoch == 2
    assert "setup (data, cache) 150 s" in _log(t)
    assert "another 20 s epoch would not fit" in _log(t)


def test_the_cache_when_complete_or_when_it_pays_for_itself():
    assert choose_features(0, 8, draws=1).use_cache
    assert choose_features(100, 8, draws=101).use_cache and not choose_features(100, 8, draws=100).use_cache
    # 100 slices at 0.5 s plus 100 / 8 steps' worth of 2 s: the cache pays after 75 s
    kw = dict(encode_s_per_item=0.5, step_s=2.0)
    assert choose_features(100, 8, budget_s=76, **kw).use_cache
    choice = choose_features(100, 8, budget_s=74, **kw)
    assert not choice.use_cache and "pays after 75 s of the 74 s left" in choice.reason
    with pytest.raises(ValueError):
        choose_features(100, 8, budget_s=74)


def test_auto_features_follow_the_run(prepared):
    """The plans' auto policy: a short run encodes online; a complete cache is always used."""
    cache = prepared / "nnUNet_preprocessed" / "Dataset012_Synth" / "desam_cache"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(prepared / "nnUNet_results", ignore_errors=True)
    t = train(12, 1, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1)
    assert t.use_cache is False and not cache.exists()
    items = len(t.items.case_of_item)
    assert f"Features: online ({items} slices to cache, {3 * t.batch_size} slices drawn in this run)" in _log(t)
    # under a budget the choice is measured: a budget already spent cannot pay for the build
    t = train(12, 3, device="cpu", iterations_per_epoch=2, val_iterations=1, time_budget=0.0001)
    assert t.use_cache is False and not cache.exists()
    assert re.search(rf"Features: online \({items} slices to cache at [\d.]+ s each, [\d.]+ s per step on features: "
                     r"the cache pays after \d+ s of the -?\d+ s left\)", _log(t))
    train(12, 1, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1, use_cache=True)
    t = train(12, 2, device="cpu", epochs=1, iterations_per_epoch=2, val_iterations=1)
    assert t.use_cache is True and "Features: cache (the embedding cache is complete)" in _log(t)


@pytest.mark.parametrize("trainer, augmented", [("DeSAMTrainer", True), ("DeSAMTrainer_noDA", False),
                                                ("DeSAMTrainer_paper", False)])
def test_online_batches_are_augmented_anew_each_epoch(prepared, monkeypatch, trainer, augmented):
    """The same slice, drawn in two epochs, reaches the network as different images (nnU-Net's
    transforms); without augmentation as the same one. Labels keep -1 for padding."""
    shutil.rmtree(prepared / "nnUNet_results", ignore_errors=True)
    monkeypatch.setattr(_Batches, "_draw", lambda self, n: np.full(n, self.foreground[0]))
    seen = []
    forward = DeSAMTrainer._forward

    def recording_forward(self, batch):
        if self.network.training:
            seen.append((batch["images"].clone(), batch["seg"].clone()))
        return forward(self, batch)

    monkeypatch.setattr(DeSAMTrainer, "_forward", recording_forward)
    t = train(12, 0, trainer=trainer, device="cpu", epochs=2, iterations_per_epoch=1, val_iterations=1,
              use_cache=False)
    assert t.prompt_mode == ("points" if trainer == "DeSAMTrainer_paper" else "mixed")  # the paper's: one point
    (first, seg_first), (second, seg_second) = seen
    assert first.shape == second.shape and first.shape[0] >= 2
    assert not torch.equal(first, second) if augmented else torch.equal(first, second)
    for seg in (seg_first, seg_second):
        assert set(torch.unique(seg).tolist()) <= {-1, 0, 1, 2} and (seg == -1).any()  # the slice is 40 x 48
