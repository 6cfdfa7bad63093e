"""One-change DeSAMTrainer variants, as nnU-Net's ``nnUNetTrainerNoDA`` (``desam_train ... -tr NAME``).

Each keeps nnU-Net's explicit ``__init__`` signature: nnU-Net records the arguments by name for checkpoints.
"""
import torch

from desam_nnu.trainers.desam_trainer import DeSAMTrainer


class DeSAMTrainer_noDA(DeSAMTrainer):
    """Online batches without nnU-Net's augmentation."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.augment_online = False


class DeSAMTrainer_paper(DeSAMTrainer):
    """The paper's recipe: one random point per slice, no augmentation; the rest (frozen encoder, Adam
    1e-4 without weight decay, Dice + BCE + IoU-MSE loss) is the default trainer's already."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.prompt_mode = "points"
        self.augment_online = False


class DeSAMTrainer_box(DeSAMTrainer):
    """Whole-slice box prompts only (``desam_train --prompt-mode box``): trains what box prediction serves."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.prompt_mode = "box"


class DeSAMTrainer_int8Cache(DeSAMTrainer):
    """The embedding cache quantised to int8 per channel (``--cache-dtype int8``): a quarter of float32."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cache_dtype = "int8"


class DeSAMTrainer_trainEncoder(DeSAMTrainer):
    """The image encoder trained too (``--train-encoder``); features are then encoded online."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.train_encoder = True
