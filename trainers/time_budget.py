"""Stop an nnU-Net trainer after a wall-clock budget, for fair comparisons on a fixed CPU budget.

A mixin for any ``nnUNetTrainer`` subclass (DeSAMTrainer, and nnU-Net's own trainer in
``benchmarks/nnunet_trainers``): training stops after the epoch in which ``time_budget`` seconds
of training had passed (per-epoch validation included, the final validation not), and ends as a
finished training does (``checkpoint_final.pth``, then the final validation).
"""
import time
from typing import Optional


class _BudgetSpent(Exception):
    """Raised at an epoch's end when the budget is spent; ``run_training`` finishes cleanly."""


class TimeBudgetMixin:
    """Put before ``nnUNetTrainer`` in the bases; set ``time_budget`` (seconds) or leave it None."""

    time_budget: Optional[float] = None
    _training_started: float = 0.0

    def run_training(self) -> None:
        self._training_started = time.monotonic()
        try:
            super().run_training()
        except _BudgetSpent:
            self.on_train_end()

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        spent = time.monotonic() - self._training_started
        if self.time_budget is not None and spent > self.time_budget and self.current_epoch < self.num_epochs:
            self.print_to_log_file(f"Time budget of {self.time_budget:.0f} s spent after {self.current_epoch} "
                                   f"epoch(s) ({spent:.0f} s): stopping")
            raise _BudgetSpent()
