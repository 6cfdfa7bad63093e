"""DeSAM trainers (nnUNetTrainer subclasses); installed as ``desam_nnu.trainers``.

For ``nnUNetv2_train ... -tr DeSAMTrainer``, point ``nnUNet_extTrainer`` at this folder.
"""
from desam_nnu.trainers.desam_trainer import DeSAMTrainer

TRAINERS = {c.__name__: c for c in (DeSAMTrainer,)}

__all__ = ["DeSAMTrainer", "TRAINERS"]
