"""nnU-Net's own trainer with 2, 3 or 4 epochs, for benchmarks/dice_budget.py's 60- and 120-minute budgets.

Each class changes one thing, ``num_epochs``, as nnU-Net's shipped
``nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs`` do (it ships 1, 5,
10, ... epochs): everything else (250 iterations per epoch, the polynomial learning rate reaching 0
at the last epoch, augmentation, the final validation with mirroring) is ``nnUNetTrainer``'s. A
schedule of N epochs completes inside a time budget, where stopping the 1000-epoch schedule
part-way would not. nnU-Net finds them by name with ``nnUNet_extTrainer`` pointing at this folder::

    nnUNet_extTrainer=benchmarks/nnunet_trainers nnUNetv2_train 4 2d 0 -tr nnUNetTrainer_4epochs
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_2epochs(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2


class nnUNetTrainer_3epochs(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3


class nnUNetTrainer_4epochs(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
