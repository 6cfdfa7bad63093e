"""Stop an nnU-Net trainer after a time budget, for fair comparisons on a fixed CPU budget.

A mixin for any ``nnUNetTrainer`` subclass (DeSAMTrainer, and nnU-Net's own trainer in
``benchmarks/nnunet_trainers``): training stops after the epoch in which ``time_budget`` seconds
of training had passed (per-epoch validation included, the final validation not), and ends as a
finished training does (``checkpoint_final.pth``, then the final validation).

The clock is wall time, or with ``DESAM_BUDGET_CLOCK=cpu`` the CPU time of the training process
(all its threads; ``time.process_time``). The CPU clock keeps a comparison fair on a shared machine,
where wall time depends on what else runs; it counts worker processes only if there are none, so
benchmarks run both trainers with ``nnUNet_n_proc_DA=0`` (augmentation in the training process).
"""
import os
import time
from typing import Callable, Optional

CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


class _BudgetSpent(Exception):
    """Raised at an epoch's end when the budget is spent; ``run_training`` finishes cleanly."""


def budget_clock() -> str:
    """The clock named by ``DESAM_BUDGET_CLOCK`` (``wall`` unless set); an unknown name is an error."""
    name = os.environ.get("DESAM_BUDGET_CLOCK", "wall")
    if name not in CLOCKS:
        raise ValueError(f"DESAM_BUDGET_CLOCK={name!r}: use one of {', '.join(CLOCKS)}")
    return name


class TimeBudgetMixin:
    """Put before ``nnUNetTrainer`` in the bases; set ``time_budget`` (seconds) or leave it None."""

    time_budget: Optional[float] = None
    _training_started: float = 0.0
    _clock: Callable[[], float] = staticmethod(time.monotonic)

    def run_training(self) -> None:
        name = budget_clock()
        self._clock = CLOCKS[name]
        if self.time_budget is not None:
            self.print_to_log_file(f"Time budget: {self.time_budget:.0f} s of {name} time")
        self._training_started = self._clock()
        try:
            super().run_training()
        except _BudgetSpent:
            self.on_train_end()

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        spent = self._clock() - self._training_started
        if self.time_budget is not None and spent > self.time_budget and self.current_epoch < self.num_epochs:
            self.print_to_log_file(f"Time budget of {self.time_budget:.0f} s spent after {self.current_epoch} "
                                   f"epoch(s) ({spent:.0f} s): stopping")
            raise _BudgetSpent()
