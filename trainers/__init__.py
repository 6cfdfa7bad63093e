"""The trainers of every network family (nnUNetTrainer subclasses); installed as ``desam_nnu.trainers``.

Found by name in this package's modules, as nnU-Net finds its own (no hand-kept list): a new family's
trainer or a one-change variant is found once its module is here. For ``nnUNetv2_train ... -tr NAME``,
point ``nnUNet_extTrainer`` at this folder.
"""
import importlib
import inspect
import pkgutil
from typing import Dict, Type

from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.dapsam_trainer import DAPSAMTrainer
from desam_nnu.trainers.dbsam_trainer import DBSAMTrainer
from desam_nnu.trainers.desam_trainer import DeSAMTrainer
from desam_nnu.trainers.masksam_trainer import MaskSAMTrainer


def find_trainers() -> Dict[str, Type[SAMFamilyTrainer]]:
    """Every concrete trainer class defined in this package, by name."""
    found: Dict[str, Type[SAMFamilyTrainer]] = {}
    for module in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{module.name}")
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, SAMFamilyTrainer) and cls.family and cls.__module__ == mod.__name__:
                found[name] = cls
    return found


def default_trainer(family: str) -> str:
    """The name of ``family``'s own trainer (not a one-change variant, whose names hold ``_``)."""
    names = sorted(n for n, c in find_trainers().items() if c.family == family and "_" not in n)
    if not names:
        raise ValueError(f"no trainer for the network family {family!r}")
    return names[0]


__all__ = ["DAPSAMTrainer", "DBSAMTrainer", "DeSAMTrainer", "MaskSAMTrainer", "SAMFamilyTrainer", "default_trainer",
           "find_trainers"]
