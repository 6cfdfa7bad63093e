"""The models of a robustness study: trained DeSAM models and nnU-Net v2 results folders, each predicted with
its own tool as its users predict (``desam_predict``'s chosen configuration; ``nnUNetPredictor`` plus the
postprocessing ``nnUNetv2_find_best_configuration`` chose, when the folder has one)."""
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle

from desam_nnu.config import CONFIGURATIONS
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.model_folder import resolve_folds, resolve_model_folder

CHECKPOINT = "checkpoint_final.pth"


@dataclass
class StudyModel:
    """One model: what it is, where, and what it was trained on (channels, labels) for the input checks."""

    name: str
    kind: str  # "desam" or "nnunet"
    folder: str
    dataset_json: dict = field(repr=False)
    folds: List = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def label_values(self) -> List[int]:
        values = [v for v in self.dataset_json["labels"].values() if isinstance(v, int)]
        return sorted(values)


def _kind(folder: str) -> Optional[str]:
    """``desam`` or ``nnunet`` for a results folder named TRAINER__PLANS__CONFIGURATION with its plans; else None."""
    parts = os.path.basename(os.path.normpath(folder)).split("__")
    if len(parts) != 3 or not all(os.path.isfile(os.path.join(folder, f)) for f in ("plans.json", "dataset.json")):
        return None
    if parts[2] not in load_json(os.path.join(folder, "plans.json")).get("configurations", {}):
        return None
    return "desam" if parts[2] in CONFIGURATIONS else "nnunet"


def resolve_study_models(specs: Sequence[str]) -> List[StudyModel]:
    """A model per spec: a model folder of either tool, or a dataset id/name with a trained DeSAM model."""
    models: List[StudyModel] = []
    for spec in specs:
        folder = spec
        if not os.path.isdir(spec):
            try:
                folder = resolve_model_folder(dataset=spec)
            except DeSAMInputError as e:
                raise DeSAMInputError(f"--models {spec}: unknown model: neither a model folder nor a dataset with a "
                                      f"trained DeSAM model ({e})") from None
        kind = _kind(folder)
        if kind is None:
            raise DeSAMInputError(f"{folder}: unknown model: not a DeSAM or nnU-Net v2 results folder "
                                  f"(TRAINER__PLANS__CONFIGURATION holding plans.json, dataset.json and fold_N)")
        folds = resolve_folds(folder, None, CHECKPOINT)
        base = "desam" if kind == "desam" else f"nnunet_{os.path.basename(os.path.normpath(folder)).split('__')[2]}"
        name, n = base, 2
        while any(m.name == name for m in models):
            name, n = f"{base}_{n}", n + 1
        models.append(StudyModel(name, kind, folder, load_json(os.path.join(folder, "dataset.json")), folds))
    return models


def nnunet_postprocessing(model: StudyModel) -> Optional[str]:
    """The ``postprocessing.pkl`` that ``nnUNetv2_find_best_configuration`` wrote for these folds, if any."""
    path = os.path.join(model.folder, "crossval_results_folds_" + "_".join(str(f) for f in model.folds),
                        "postprocessing.pkl")
    return path if os.path.isfile(path) else None


class StudyPredictor:
    """Loads a model once, on first use, and predicts whole folders with it."""

    def __init__(self, model: StudyModel, device: torch.device, use_mirroring: bool) -> None:
        self.model, self.device, self.use_mirroring = model, device, use_mirroring
        self._predictor = None

    def _load(self):
        if self.model.kind == "desam":
            from desam_nnu.inference.predictor import DeSAMPredictor
            predictor = DeSAMPredictor(use_mirroring=self.use_mirroring, device=self.device)
        else:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            predictor = nnUNetPredictor(use_mirroring=self.use_mirroring, device=self.device,
                                        perform_everything_on_device=self.device.type == "cuda")
        predictor.initialize_from_trained_model_folder(self.model.folder, self.model.folds, CHECKPOINT)
        if self.model.kind == "desam":
            print(f"{self.model.name}: {predictor.configuration_note}")
        return predictor

    def predict(self, images: str, output: str) -> None:
        """Every case of ``images`` into ``output``; ``output`` is complete only when this returns."""
        if self._predictor is None:
            self._predictor = self._load()
        if self.model.kind == "desam":
            report = self._predictor.predict_folder(images, output, continue_prediction=True,
                                                    num_processes_preprocessing=0, num_processes_export=0)
            if report.failures:
                raise DeSAMInputError(next(iter(report.failures.values())))
            return
        # nnU-Net writes its files in place (not atomically): an interrupted folder is redone whole
        pp = nnunet_postprocessing(self.model)
        raw = output + ".raw" if pp else output
        for folder in (output, raw):
            shutil.rmtree(folder, ignore_errors=True)
        # nnU-Net's own in-process path: a set is a few small volumes, worker processes would cost more than they save
        os.makedirs(raw)  # its sequential path writes its arguments there before making the folder
        self._predictor.predict_from_files_sequential(images, raw, save_probabilities=False, overwrite=True)
        if pp:
            from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder
            fns, kwargs = load_pickle(pp)
            apply_postprocessing_to_folder(raw, output, fns, kwargs, os.path.join(self.model.folder, "plans.json"),
                                           os.path.join(self.model.folder, "dataset.json"), num_processes=1)
            shutil.rmtree(raw)


def describe(models: Sequence[StudyModel]) -> Dict[str, dict]:
    """The models as robustness.json records them."""
    return {m.name: {"kind": m.kind, "folder": os.path.abspath(m.folder), "folds": [str(f) for f in m.folds],
                     "postprocessing": (nnunet_postprocessing(m) if m.kind == "nnunet" else
                                        "desam_predict's chosen configuration")} for m in models}
