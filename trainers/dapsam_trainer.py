"""DAPSAMTrainer: the shared trainer (``base.py``) with the official DAPSAM recipe (wkklavis/DAPSAM, train.py and
trainer.py): adapters, prompt generator and mask decoder trained, the ViT frozen; prompt-free.

- loss: ``0.2 * BCE + 0.8 * Dice`` on sigmoids, Dice over the batch with smooth 1 (``loss.DAPSAMLoss``);
- optimiser: AdamW, lr 5e-4, weight decay 0.1; per iteration a linear warm-up, then poly 0.9 to 0 at the
  end of training (the official stops at 80% of its poly schedule, at epoch 160 of 200; here the decay
  completes, as nnU-Net's and DeSAM's schedules do), or at the end of the time budget. The warm-up is the
  official's 250 iterations, or 1% of the schedule when that is shorter (its 250 iterations are 1% of
  nnU-Net's 100 x 250-iteration schedule, 0.5% of its own): on hippocampus at 128 px a CPU iteration
  took about 7 s, so 250 iterations would fill a whole 30-minute budget with warm-up;
- batch 8 (the planner's); features always online (the adapters change the encoder's features);
- input: as the plans' ``input_normalisation`` says (z-scored per image and channel on the ViTs, as the
  official; 0..1 on medsam_lite, LiteMedSAM's range);
- logits: the decoder's (1/4 of the input on the ViTs, the input on medsam_lite) resized to the patch,
  the same call as prediction (``inference.prompt_free.family_logits``); the final validation is the
  shared prompt-free one.
"""
from typing import Callable, Dict, Optional

import torch

from desam_nnu.inference.prompt_free import family_logits
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.distributed import from_rank0
from desam_nnu.trainers.loss import DAPSAMLoss

WARMUP_ITERATIONS = 250
WARMUP_SHARE = WARMUP_ITERATIONS / (100 * 250)  # 1%: the official's 250 iterations in nnU-Net's default schedule
POLY_EXPONENT = 0.9


class WarmupPolyLR:
    """The per-iteration rate: ``lr * w`` while the warm-up's progress ``w = warmup(i)`` is below 1, then
    ``lr * (1 - progress(i)) ** 0.9``, progress running 0 -> 1 over the rest of training (iterations, or
    seconds of the time budget). nnU-Net's per-epoch ``step(epoch)`` does nothing here: the trainer calls
    :meth:`step_iteration` after each optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, warmup: Callable[[int], float],
                 progress: Callable[[int], float], iteration: int = 0) -> None:
        self.optimizer, self.initial_lr, self.warmup, self.progress = optimizer, initial_lr, warmup, progress
        self.iteration = iteration
        self._set(self.rate())

    def rate(self) -> float:
        w = self.warmup(self.iteration)
        if w < 1:
            return self.initial_lr * w
        return self.initial_lr * (1 - min(max(self.progress(self.iteration), 0.0), 1.0)) ** POLY_EXPONENT

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, current_step: Optional[int] = None) -> None:
        pass

    def step_iteration(self) -> None:
        self.iteration += 1
        self._set(self.rate())


class DAPSAMTrainer(SAMFamilyTrainer):
    family = "dapsam"
    # the official: AdamW 5e-4, weight decay 0.1, a linear warm-up; adapters inside the encoder train, so no cache
    recipe = {"initial_lr": 5e-4, "weight_decay": 0.1, "warmup_iterations": WARMUP_ITERATIONS, "use_cache": False}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._warmup_ended_s: Optional[float] = None  # the budget's seconds when its warm-up ended

    def _set_trainable(self) -> None:
        self.bare_network.freeze_backbone()

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, self._scheduler(optimizer)

    def _scheduler(self, optimizer: torch.optim.Optimizer, iteration: int = 0) -> WarmupPolyLR:
        return WarmupPolyLR(optimizer, self.initial_lr, self._warmup_progress, self._poly_progress, iteration)

    def _warmup_iterations(self) -> float:
        """Without a time budget: ``warmup_iterations``, or 1% of the schedule's iterations when fewer."""
        return min(self.warmup_iterations, WARMUP_SHARE * self.num_epochs * self.num_iterations_per_epoch)

    def _warmup_progress(self, iteration: int) -> float:
        """0 -> 1 over the warm-up: ``warmup_iterations``, or 1% of the schedule (its iterations, or its time
        budget's seconds) when that ends first."""
        w = (iteration + 1) / self._warmup_iterations()
        if self.time_budget is not None:
            if self._warmup_ended_s is not None:
                return 1.0
            spent = from_rank0(self.budget_spent_s)  # under DDP, rank 0's clock: the ranks' rates stay equal
            w = max((iteration + 1) / self.warmup_iterations, spent / (WARMUP_SHARE * self.time_budget))
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

    def _build_loss(self) -> DAPSAMLoss:
        return DAPSAMLoss()

    def _forward(self, batch: Dict[str, object]):
        seg = batch["seg"].to(self.device)
        logits = family_logits(self.bare_network, batch["images"].to(self.device), self.desam)
        loss, _ = self.loss(logits, seg)
        return loss, logits, seg

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        self.lr_scheduler.step_iteration()
        return out

    def training_options(self) -> dict:
        return {**super().training_options(), "warmup_iterations": self.warmup_iterations}
