"""nnU-Net's own trainer stopped after a CPU time budget, for benchmarks/dice_budget.py.

A variant that changes one thing, as nnU-Net's ``nnUNetTrainer_Xepochs``: training stops after the
epoch in which ``DESAM_BENCH_BUDGET_MIN`` minutes of training had passed, exactly as ``desam_train
--time-budget`` (the same mixin). Epochs are ``DESAM_BENCH_ITERS`` iterations so that the budget is
met closely. Found by ``nnUNetv2_train -tr nnUNetTrainer_TimeBudget`` with ``nnUNet_extTrainer`` set
to this folder.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from desam_nnu.trainers.time_budget import TimeBudgetMixin


class nnUNetTrainer_TimeBudget(TimeBudgetMixin, nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.time_budget = float(os.environ.get("DESAM_BENCH_BUDGET_MIN", "10")) * 60
        self.num_epochs = int(os.environ.get("DESAM_BENCH_EPOCHS", "1000"))
        self.num_iterations_per_epoch = int(os.environ.get("DESAM_BENCH_ITERS", "50"))
        self.num_val_iterations_per_epoch = int(os.environ.get("DESAM_BENCH_VAL_ITERS", "10"))
