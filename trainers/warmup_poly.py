"""The learning-rate schedule of the adapter families (DAPSAM, DB-SAM): a warm-up, then poly 0.9 to 0 per
iteration, over iterations or over the seconds of a time budget.

- DAPSAM (official): a linear warm-up over 250 iterations, or 1% of the schedule when that is shorter (its 250
  iterations are 1% of nnU-Net's 100 x 250-iteration schedule);
- DB-SAM (official): one of its 20 epochs (5% of the schedule) at half the rate, then poly.
"""
from typing import Callable, Optional

import torch

from desam_nnu.trainers.distributed import from_rank0

POLY_EXPONENT = 0.9


class WarmupPolyLR:
    """The per-iteration rate: ``lr * w`` (``factor`` None: linear) or ``lr * factor`` (constant) while the warm-up's
    progress ``w = warmup(i)`` is below 1, then ``lr * (1 - progress(i)) ** 0.9``, progress running 0 -> 1 over the
    rest of training (iterations, or seconds of the time budget). nnU-Net's per-epoch ``step(epoch)`` does nothing
    here: the trainer calls :meth:`step_iteration` after each optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, warmup: Callable[[int], float],
                 progress: Callable[[int], float], iteration: int = 0, factor: Optional[float] = None) -> None:
        self.optimizer, self.initial_lr, self.warmup, self.progress = optimizer, initial_lr, warmup, progress
        self.iteration, self.factor = iteration, factor
        self._set(self.rate())

    def rate(self) -> float:
        w = self.warmup(self.iteration)
        if w < 1:
            return self.initial_lr * (w if self.factor is None else self.factor)
        return self.initial_lr * (1 - min(max(self.progress(self.iteration), 0.0), 1.0)) ** POLY_EXPONENT

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, current_step: Optional[int] = None) -> None:
        pass

    def step_iteration(self) -> None:
        self.iteration += 1
        self._set(self.rate())


class WarmupPolyMixin:
    """For a :class:`~desam_nnu.trainers.base.SAMFamilyTrainer`: AdamW over the trainable parameters with the
    schedule above. The recipe sets ``warmup_share`` (of the schedule's iterations or of the time budget),
    ``warmup_iterations`` (a cap in iterations, or None) and ``warmup_factor`` (None: linear)."""

    warmup_share: float = 0.01
    warmup_iterations: Optional[int] = None
    warmup_factor: Optional[float] = None
    _warmup_ended_s: Optional[float] = None  # the budget's seconds when its warm-up ended

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, self._scheduler(optimizer)

    def _scheduler(self, optimizer: torch.optim.Optimizer, iteration: int = 0) -> WarmupPolyLR:
        return WarmupPolyLR(optimizer, self.initial_lr, self._warmup_progress, self._poly_progress, iteration,
                            self.warmup_factor)

    def _warmup_iterations(self) -> float:
        """Without a time budget: ``warmup_share`` of the schedule's iterations, or ``warmup_iterations`` when
        fewer."""
        share = self.warmup_share * self.num_epochs * self.num_iterations_per_epoch
        return share if self.warmup_iterations is None else min(self.warmup_iterations, share)

    def _warmup_progress(self, iteration: int) -> float:
        """0 -> 1 over the warm-up: ``warmup_iterations``, or ``warmup_share`` of the schedule (its iterations, or
        its time budget's seconds) when that ends first."""
        w = (iteration + 1) / self._warmup_iterations()
        if self.time_budget is not None:
            if self._warmup_ended_s is not None:
                return 1.0
            spent = from_rank0(self.budget_spent_s)  # under DDP, rank 0's clock: the ranks' rates stay equal
            w = spent / (self.warmup_share * self.time_budget)
            if self.warmup_iterations is not None:
                w = max((iteration + 1) / self.warmup_iterations, w)
            if w >= 1:
                self._warmup_ended_s = spent  # the budget's poly decay starts here
        return w

    def _poly_progress(self, iteration: int) -> float:
        """0 -> 1 from the warm-up's end to the end of training (its iterations, or its time budget)."""
        if self.time_budget is None:
            start = self._warmup_iterations()
            return (iteration + 1 - start) / max(self.num_epochs * self.num_iterations_per_epoch - start, 1)
        spent = from_rank0(self.budget_spent_s)
        return (spent - self._warmup_ended_s) / max(self.time_budget - self._warmup_ended_s, 1e-6)

    def on_train_start(self) -> None:
        super().on_train_start()
        # after the time budget's scheduler (time_budget.py), which ours replaces: it reads the budget through
        # its progress functions; a resumed run (--c) continues from its epoch's iteration
        self._warmup_ended_s = None
        self.lr_scheduler = self._scheduler(self.optimizer, self.current_epoch * self.num_iterations_per_epoch)

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        self.lr_scheduler.step_iteration()
        return out

    def training_options(self) -> dict:
        return {**super().training_options(), "warmup_share": self.warmup_share,
                "warmup_iterations": self.warmup_iterations, "warmup_factor": self.warmup_factor}
