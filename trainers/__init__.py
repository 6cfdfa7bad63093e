"""DeSAM trainers (nnUNetTrainer subclasses); installed as ``desam_nnu.trainers``.

For ``nnUNetv2_train ... -tr DeSAMTrainer``, point ``nnUNet_extTrainer`` at this folder.
"""
from desam_nnu.trainers.desam_trainer import DeSAMTrainer
from desam_nnu.trainers.variants import DeSAMTrainer_noDA, DeSAMTrainer_paper

TRAINERS = {c.__name__: c for c in (DeSAMTrainer, DeSAMTrainer_noDA, DeSAMTrainer_paper)}

__all__ = ["DeSAMTrainer", "DeSAMTrainer_noDA", "DeSAMTrainer_paper", "TRAINERS"]
