"""Train an nnU-Net trainer within a time budget, its learning rate decaying to the budget's end.

A mixin for any ``nnUNetTrainer`` subclass (``DeSAMTrainer``): with ``time_budget`` seconds set,

- the budget covers everything from ``run_training`` on: data setup (the embedding cache build
  included), training steps, per-epoch pseudo-validation, checkpoints; not the final validation;
- when the next epoch, as long as the last one, would not fit, it is shortened to the iterations
  that do (pseudo-validation scaled with them, ``LAST_EPOCH_MARGIN`` of the time left kept in hand),
  then training stops, so the whole run ends within the budget, as nnU-Net's own fixed schedules
  are chosen to, without leaving up to an epoch of it unused; it ends as a finished training does
  (``checkpoint_final.pth``, then the final validation);
- the learning rate follows nnU-Net's poly schedule over the budget instead of over the epochs,
  set at each epoch's start as nnU-Net sets it: ``lr = initial_lr * (1 - spent / budget) ** 0.9``,
  so a short run decays as nnU-Net's short trainers do instead of keeping the first epochs' rate;
- at the end the log says how the budget was spent (``Budget spent: ...``), on a CPU with a training
  iteration's seconds by part (``step_part``): batches (loading, augmentation), forward and loss (the
  frozen encoder's share named where a family times it), backward and optimizer.

The clock is wall time, or with ``DESAM_BUDGET_CLOCK=cpu`` the CPU time of the training process
(all its threads; ``time.process_time``), which does not count background workers.
"""
import os
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from desam_nnu.trainers.distributed import from_rank0

CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}
# the shortened last epoch plans for this share of the time left: epochs vary by about 10% in length
LAST_EPOCH_MARGIN = 0.9


class _BudgetSpent(Exception):
    """Raised at an epoch's end when the budget is spent; ``run_training`` finishes cleanly."""


def budget_clock() -> str:
    """The clock named by ``DESAM_BUDGET_CLOCK`` (``wall`` unless set); an unknown name is an error."""
    name = os.environ.get("DESAM_BUDGET_CLOCK", "wall")
    if name not in CLOCKS:
        raise ValueError(f"DESAM_BUDGET_CLOCK={name!r}: use one of {', '.join(CLOCKS)}")
    return name


class BudgetPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule with seconds of the budget as its steps: ``step()`` ignores the epoch
    it is given and reads ``elapsed()`` (seconds since training started), so the rate reaches its
    final value, 0, when the budget ends."""

    def __init__(self, optimizer, initial_lr: float, budget_s: float, elapsed: Callable[[], float]) -> None:
        self.elapsed = elapsed
        super().__init__(optimizer, initial_lr, budget_s)

    def step(self, current_step=None) -> None:
        super().step(min(max(self.elapsed(), 0.0), self.max_steps))


class TimeBudgetMixin:
    """Put before ``nnUNetTrainer`` in the bases; set ``time_budget`` (seconds) or leave it None."""

    time_budget: Optional[float] = None
    _training_started: Optional[float] = None
    _clock: Callable[[], float] = staticmethod(time.monotonic)
    _epoch_started: float = 0.0
    _phase_started: float = 0.0
    _last_epoch_s: float = 0.0
    _last_epoch_shortened: bool = False
    _budget_parts: Dict[str, float]  # seconds per phase, set in run_training
    _budget_iterations: int = 0
    _step_parts: Dict[str, float]  # seconds per part of the training steps (step_part), CPU only

    @property
    def budget_spent_s(self) -> float:
        """Seconds of the budget's clock since training started (0 before)."""
        return 0.0 if self._training_started is None else self._clock() - self._training_started

    def _spend(self, what: str, seconds: float) -> None:
        self._budget_parts[what] = self._budget_parts.get(what, 0.0) + seconds

    @contextmanager
    def step_part(self, what: str) -> Iterator[None]:
        """Times a part of a training step (not of pseudo-validation) for the budget line; on a CPU only, where
        the clock sees the work (CUDA kernels run asynchronously, and synchronising to time them would slow
        the step)."""
        if self.device.type != "cpu" or not self.network.training:
            yield
            return
        start = self._clock()
        try:
            yield
        finally:
            parts = self.__dict__.setdefault("_step_parts", {})  # steps may run outside run_training (benchmarks)
            parts[what] = parts.get(what, 0.0) + self._clock() - start

    def _step_parts_text(self, steps_s: float, iterations: int) -> str:
        """``; per iteration: batches a s, forward and loss b s (the encoder c s), backward and optimizer d s``;
        batches are the training phase's seconds outside the steps (loading, augmentation, nnU-Net's hooks)."""
        parts = self.__dict__.get("_step_parts")
        if not parts or not iterations:
            return ""
        timed = {k: v for k, v in parts.items() if k in ("forward and loss", "backward and optimizer")}
        text = [f"batches {(steps_s - sum(timed.values())) / iterations:.2f} s"]
        for k, v in timed.items():
            text.append(f"{k} {v / iterations:.2f} s")
            if k == "forward and loss" and "encoder" in parts:
                text[-1] += f" (the encoder {parts['encoder'] / iterations:.2f} s)"
        return "; per iteration: " + ", ".join(text)

    def run_training(self) -> None:
        name = budget_clock()
        self._clock = CLOCKS[name]
        self._training_started = self._clock()
        self._budget_parts, self._budget_iterations, self._last_epoch_shortened = {}, 0, False
        self._step_parts = {}
        if self.time_budget is not None:
            self.print_to_log_file(f"Time budget: {self.time_budget:.0f} s of {name} time, the learning rate "
                                   f"decaying over it")
        try:
            super().run_training()
        except _BudgetSpent:
            self.on_train_end()

    def on_train_start(self) -> None:
        start = self._clock()
        super().on_train_start()
        if self.time_budget is not None:
            # after nnU-Net's setup, which builds the epoch-based scheduler in initialize()
            # under DDP every rank's learning rate follows rank 0's clock, so that the ranks' weights stay equal
            self.lr_scheduler = BudgetPolyLRScheduler(self.optimizer, self.initial_lr, self.time_budget,
                                                      lambda: from_rank0(self.budget_spent_s))
        self._spend("setup (data, cache)", self._clock() - start)

    # phases timed at nnU-Net's hooks, not around train_step / validation_step, which trainers override
    def on_train_epoch_start(self) -> None:
        self._phase_started = self._clock()
        super().on_train_epoch_start()  # nnU-Net steps the scheduler here: the budget's one reads the clock

    def on_train_epoch_end(self, train_outputs) -> None:
        super().on_train_epoch_end(train_outputs)
        self._spend("training (batches and steps)", self._clock() - self._phase_started)
        self._budget_iterations += len(train_outputs)

    def on_validation_epoch_start(self) -> None:
        self._phase_started = self._clock()
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self, val_outputs) -> None:
        super().on_validation_epoch_end(val_outputs)
        self._spend("pseudo-validation", self._clock() - self._phase_started)

    def on_epoch_start(self) -> None:
        self._epoch_started = self._clock()
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        self._last_epoch_s = self._clock() - self._epoch_started
        spent, self._last_epoch_s = from_rank0((self.budget_spent_s, self._last_epoch_s))  # all ranks stop together
        if (self.time_budget is None or spent + self._last_epoch_s <= self.time_budget
                or self.current_epoch >= self.num_epochs):
            return
        # the epoch's seconds per training iteration, its share of pseudo-validation and checkpoints included
        per_iteration = self._last_epoch_s / self.num_iterations_per_epoch
        fit = int(LAST_EPOCH_MARGIN * (self.time_budget - spent) // per_iteration)
        if self._last_epoch_shortened or fit < 1:
            why = ("the shortened last epoch done" if self._last_epoch_shortened
                   else f"another {self._last_epoch_s:.0f} s epoch would not fit, nor one iteration of it")
            self.print_to_log_file(f"Time budget of {self.time_budget:.0f} s: stopping after {self.current_epoch} "
                                   f"epoch(s) ({spent:.0f} s spent; {why})")
            raise _BudgetSpent()
        val = max(1, round(self.num_val_iterations_per_epoch * fit / self.num_iterations_per_epoch))
        self.print_to_log_file(f"Time budget of {self.time_budget:.0f} s: the last epoch shortened to {fit} of "
                               f"{self.num_iterations_per_epoch} iterations ({val} of "
                               f"{self.num_val_iterations_per_epoch} pseudo-validation), {spent:.0f} s spent and "
                               f"another {self._last_epoch_s:.0f} s epoch would not fit")
        # nnU-Net's run_training reads both counts afresh at each epoch's loops
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = fit, val
        self._last_epoch_shortened = True

    def on_train_end(self) -> None:
        if self._training_started is not None:
            parts = dict(self._budget_parts)
            total = self.budget_spent_s
            iterations = self._budget_iterations
            steps = parts.get("training (batches and steps)", 0.0)
            parts["other (checkpoints, logging)"] = total - sum(parts.values())
            budget = f" of {self.time_budget:.0f} s" if self.time_budget is not None else ""
            self.print_to_log_file(
                f"Budget spent: {total:.0f} s{budget}: " + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items())
                + f"; {iterations} iterations, {steps / max(iterations, 1):.2f} s each"
                + self._step_parts_text(steps, iterations))
        super().on_train_end()
