"""Which trained model ``desam_predict`` uses: ``-m FOLDER``, ``-d ID``, or the only one there is.

A trained model is nnU-Net's results folder ``DatasetXXX/<trainer>__<plans>__desam_2d/`` (``__masksam_3d`` for a
family over 3D patches) holding
``plans.json``, ``dataset.json`` and ``fold_N/<checkpoint>``; it may be copied anywhere and used with ``-m``.
"""
import os
from typing import List, Optional, Sequence, Union

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from desam_nnu.config import CONFIGURATIONS, PLANS_NAME
from desam_nnu.errors import DeSAMInputError
from desam_nnu.paths import env_dir, resolve_dataset_name

FoldSpec = Union[int, str]


def trained_models(results_root: str) -> List[str]:
    """Every ``DatasetXXX/*__*__desam_2d`` (or ``__masksam_3d``) folder under ``results_root`` with a fold folder."""
    found = []
    for dataset in sorted(os.listdir(results_root)) if os.path.isdir(results_root) else []:
        base = os.path.join(results_root, dataset)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            folder = os.path.join(base, name)
            if name.rsplit("__", 1)[-1] in CONFIGURATIONS and os.path.isdir(folder) and \
                    any(f.startswith("fold_") for f in os.listdir(folder)):
                found.append(folder)
    return found


def resolve_model_folder(model_dir: Optional[str] = None, dataset: Optional[Union[int, str]] = None,
                         trainer: Optional[str] = None, plans: str = PLANS_NAME) -> str:
    """The model folder to predict with; one-line errors that say how to choose. With ``dataset`` and no
    ``trainer``: DeSAMTrainer's model when there is one, else the dataset's only model (e.g. DAPSAMTrainer's)."""
    if model_dir is not None:
        if not os.path.isdir(model_dir):
            raise DeSAMInputError(f"{model_dir}: model folder does not exist")
        folder = model_dir
    elif dataset is not None:
        root = env_dir("nnUNet_results")
        name = resolve_dataset_name(dataset, root)
        if trainer is None:
            of_dataset = [parts[0] for parts, m in ((os.path.basename(m).split("__"), m) for m in trained_models(root))
                          if os.path.basename(os.path.dirname(m)) == name and parts[1] == plans]
            trainer = "DeSAMTrainer" if "DeSAMTrainer" in of_dataset or len(of_dataset) != 1 else of_dataset[0]
        candidates = [os.path.join(root, name, f"{trainer}__{plans}__{c}") for c in CONFIGURATIONS]
        folder = next((c for c in candidates if os.path.isdir(c)), candidates[0])
        if not os.path.isdir(folder):
            raise DeSAMInputError(f"{folder}: no trained model; run desam_train {dataset} FOLD first")
    else:
        root = env_dir("nnUNet_results")
        models = trained_models(root)
        if len(models) != 1:
            listing = "; ".join(os.path.relpath(m, root) for m in models) or "none"
            raise DeSAMInputError(f"{root} holds {len(models)} trained DeSAM models ({listing}): choose one with "
                                  f"-d DATASET_ID (and -tr/-p) or -m MODEL_FOLDER")
        folder = models[0]
    for f in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, f)):
            raise DeSAMInputError(f"{os.path.join(folder, f)}: missing; not a trained model folder "
                                  f"(desam_train writes it)")
    return folder


def resolve_folds(model_folder: str, folds: Optional[Sequence[FoldSpec]], checkpoint: str) -> List[FoldSpec]:
    """The folds to ensemble: those asked for, or every ``fold_N`` holding ``checkpoint`` (fold_all if
    that is the only one). Each must have the checkpoint."""
    if not folds:
        folds = sorted(nnUNetPredictor.auto_detect_available_folds(model_folder, checkpoint))  # nnU-Net's rule: fold_all left out
        if not folds and os.path.isfile(os.path.join(model_folder, "fold_all", checkpoint)):
            folds = ["all"]
        if not folds:
            present = sorted(f for f in os.listdir(model_folder) if f.startswith("fold_"))
            raise DeSAMInputError(f"{model_folder}: no fold folder holds {checkpoint} "
                                  f"({', '.join(present) or 'no fold folders'}); finish training or pick -chk")
    resolved: List[FoldSpec] = []
    for f in folds:
        f = "all" if str(f) == "all" else int(f)
        path = os.path.join(model_folder, f"fold_{f}", checkpoint)
        if not os.path.isfile(path):
            raise DeSAMInputError(f"{path}: checkpoint missing")
        resolved.append(f)
    return resolved
