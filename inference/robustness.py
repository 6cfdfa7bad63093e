"""``desam_robustness``: Dice of DeSAM and nnU-Net models under simulated scanner shifts (``shifts.py``).

Layout of OUT (every file written under a temporary name, then renamed; a killed run resumes):

- ``images/clean/``, ``images/<shift>_L<level>/``: the volumes every model sees (clean: links to the inputs),
  written once. A set is done when each of its cases' files exists.
- ``predictions/<model>/<set>/``: each model's prediction of a set; ``dice.json`` in it, written last, marks
  it done (Dice per case and class, from nnU-Net's ``compute_metrics``).
- ``robustness.json``, ``robustness.png`` and the printed table (``robustness_report.py``).
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from tqdm import tqdm

from desam_nnu.atomic import atomic_path, atomic_write_json
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.inputs import collect_cases
from desam_nnu.inference.robustness_models import StudyModel, StudyPredictor, describe, resolve_study_models
from desam_nnu.inference.shifts import LEVELS, SHIFTS, shift_channels

CLEAN = "clean"
DONE = "dice.json"


def set_name(shift: str, level: int) -> str:
    return CLEAN if level == 0 else f"{shift}_L{level}"


def _geometry(path: str) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return (reader.GetSize(), np.round(reader.GetSpacing(), 5).tolist(), np.round(reader.GetOrigin(), 4).tolist(),
            np.round(reader.GetDirection(), 5).tolist())


def check_inputs(images: str, labels: str, models: List[StudyModel], shifts: Sequence[str],
                 levels: Sequence[int]) -> Dict[str, List[str]]:
    """Every problem that would stop the study, raised as one line before anything is predicted; the cases."""
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise DeSAMInputError(f"--shifts {unknown[0]}: unknown shift; choose from {', '.join(SHIFTS)}")
    if any(level not in LEVELS for level in levels):
        raise DeSAMInputError(f"--levels {' '.join(map(str, levels))}: use levels from 1 to {LEVELS[-1]}")
    first = models[0]
    ending = first.dataset_json["file_ending"]
    found = collect_cases(images, ending, first.dataset_json["channel_names"])
    if found.failures:
        raise DeSAMInputError(next(iter(found.failures.values())))
    for m in models:
        if m.num_channels != first.num_channels:
            raise DeSAMInputError(f"{m.folder}: trained on {m.num_channels} channel(s), the images in {images} have "
                                  f"{first.num_channels}")
        if m.label_values != first.label_values:
            raise DeSAMInputError(f"{m.folder}: trained for labels {m.label_values}, {first.folder} for "
                                  f"{first.label_values}; a study compares models of the same labels")
    for case, files in found.cases.items():
        label = os.path.join(labels, case + ending)
        if not os.path.isfile(label):
            raise DeSAMInputError(f"{label}: missing; every image needs its reference label")
        if _geometry(label) != _geometry(files[0]):
            raise DeSAMInputError(f"{label}: geometry (size, spacing, origin, direction) differs from {files[0]}")
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(label)))
        extra = sorted(set(values.astype(int).tolist()) - set(first.label_values))
        if extra:
            raise DeSAMInputError(f"{label}: label value {extra[0]} is not among the models' labels "
                                  f"{first.label_values}")
    return found.cases


def write_set(cases: Dict[str, List[str]], out: str, shift: str, level: int, seed: int) -> str:
    """The images of one set in ``out``/images/<set> (cases already there are kept); the folder."""
    folder = os.path.join(out, "images", set_name(shift, level))
    os.makedirs(folder, exist_ok=True)
    for case, files in cases.items():
        targets = [os.path.join(folder, os.path.basename(f)) for f in files]
        if all(os.path.lexists(t) for t in targets):
            continue
        if level == 0:
            for f, t in zip(files, targets):
                if not os.path.lexists(t):
                    os.symlink(os.path.abspath(f), t)
            continue
        shifted = shift_channels([sitk.ReadImage(f) for f in files], shift, level, case, seed)
        for image, t in zip(shifted, targets):
            with atomic_path(t, suffix=".nii.gz" if t.endswith(".nii.gz") else os.path.splitext(t)[1]) as tmp:
                sitk.WriteImage(image, tmp, useCompression=True)
    return folder


def score_set(predictions: str, labels: str, cases: Sequence[str], model: StudyModel) -> Dict[str, Dict[str, float]]:
    """Dice per case and class (nnU-Net's ``compute_metrics``; NaN where reference and prediction are both empty)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    ending = model.dataset_json["file_ending"]
    foreground = [v for v in model.label_values if v != 0]
    dice = {}
    for case in cases:
        m = compute_metrics(os.path.join(labels, case + ending), os.path.join(predictions, case + ending),
                            SimpleITKIO(), foreground)
        dice[case] = {str(k): float(v["Dice"]) for k, v in m["metrics"].items()}
    return dice


def _claim(out: str, images: str, seed: int, models: Sequence[StudyModel]) -> None:
    """Record which images, seed and models ``out`` holds: a rerun with others would mix two studies."""
    path = os.path.join(out, "study.json")
    mine = {"images": os.path.abspath(images), "seed": seed,
            "models": {m.name: os.path.abspath(m.folder) for m in models}}
    theirs = load_json(path) if os.path.isfile(path) else {"models": {}}
    if theirs.get("images", mine["images"]) != mine["images"] or theirs.get("seed", seed) != seed:
        raise DeSAMInputError(f"{out}: holds the study of {theirs['images']} with --seed {theirs['seed']}; "
                              f"use another -o for {mine['images']} with --seed {seed}")
    for name, folder in mine["models"].items():
        if theirs["models"].get(name, folder) != folder:
            raise DeSAMInputError(f"{out}: its {name} predictions are of {theirs['models'][name]}, not {folder}; "
                                  f"use another -o")
    mine["models"] = dict(theirs["models"], **mine["models"])
    os.makedirs(out, exist_ok=True)
    atomic_write_json(mine, path)


def run_robustness(images: str, labels: str, out: str, models: Sequence[str], shifts: Optional[Sequence[str]] = None,
                   levels: Sequence[int] = LEVELS, cases: Optional[int] = None, seed: int = 0,
                   device: Optional[str] = None, disable_tta: bool = False) -> dict:
    """The whole study (see the module docstring); returns what ``robustness.json`` holds."""
    from desam_nnu.inference.robustness_report import summarise, write_plot

    shifts = list(shifts or SHIFTS)
    levels = sorted(set(levels))
    study_models = resolve_study_models(models)
    found = check_inputs(images, labels, study_models, shifts, levels)
    chosen = dict(sorted(found.items())[:cases] if cases else sorted(found.items()))
    _claim(out, images, seed, study_models)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictors = {m.name: StudyPredictor(m, dev, use_mirroring=not disable_tta) for m in study_models}
    sets = [(shifts[0], 0)] + [(s, lv) for s in shifts for lv in levels]
    dice: Dict[str, Dict[str, dict]] = {m.name: {} for m in study_models}
    for shift, level in tqdm(sets, desc="Shifted sets"):
        name = set_name(shift, level)
        folder = None
        for m in study_models:
            target = os.path.join(out, "predictions", m.name, name)
            done = os.path.join(target, DONE)
            scores = load_json(done) if os.path.isfile(done) else {}
            if not set(chosen) <= set(scores):
                folder = folder or write_set(chosen, out, shift, level, seed)
                tqdm.write(f"{m.name}: predicting {name} ({len(chosen)} cases)")
                predictors[m.name].predict(folder, target)
                scores = score_set(target, labels, list(chosen), m)
                atomic_write_json(scores, done)
            dice[m.name][name] = {c: d for c, d in scores.items() if c in chosen}
    result = {"images": os.path.abspath(images), "labels": os.path.abspath(labels), "seed": seed,
              "cases": list(chosen), "levels": levels, "use_mirroring": not disable_tta,
              "models": describe(study_models),
              "shifts": {s: {"what": SHIFTS[s].what, "levels": {str(lv): _jsonable(SHIFTS[s].levels[lv - 1])
                                                                 for lv in levels}} for s in shifts},
              "dice": dice}
    result["summary"] = summarise(result)
    atomic_write_json(result, os.path.join(out, "robustness.json"))
    write_plot(result, os.path.join(out, "robustness.png"))
    return result


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else float(value)

