"""The inference configuration chosen from cross-validation, and which prompts a model was trained for.

``desam_find_best_configuration`` writes ``desam_inference.json`` into the model folder (whole or not
at all), as nnU-Net's ``find_best_configuration`` writes ``inference_information.json`` and
``postprocessing.pkl``; ``desam_predict`` and the trainer's final validation read it here. The
postprocessing is nnU-Net's own (``remove_all_but_largest_component_from_segmentation`` with its
keyword arguments), kept as names in JSON rather than a pickle, so a damaged or foreign file is
reported instead of executed. A file that cannot be read, or that no longer fits the model (other
plans, a prompt mode the folds were not trained for), stops prediction with one line naming it.
"""
import copy
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from desam_nnu.atomic import atomic_write_json
from desam_nnu.cache import file_sha256
from desam_nnu.config import DeSAMConfig, PromptDefaults
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.prompted import PROMPT_MODES, PromptSettings

FILE = "desam_inference.json"
VERSION = 1
POSTPROCESSING = {f.__name__: f for f in (remove_all_but_largest_component_from_segmentation,)}


def plans_sha256(model_folder: str) -> str:
    return file_sha256(os.path.join(model_folder, "plans.json"))


def fold_training_prompts(model_folder: str, fold, default: str) -> str:
    """The prompt mode a fold was trained with (``desam_options.json``; the plans' for older folds)."""
    path = os.path.join(model_folder, f"fold_{fold}", "desam_options.json")
    try:
        with open(path) as f:
            return json.load(f).get("prompt_mode") or default
    except (OSError, ValueError):
        return default


def trained_predict_modes(model_folder: str, folds: Sequence, prompts: PromptDefaults) -> Tuple[str, ...]:
    """Prediction modes every one of ``folds`` was trained for (the plans' ``served_modes`` of each fold's
    training prompts), in PROMPT_MODES order."""
    allowed = set(PROMPT_MODES)
    for f in folds:
        allowed &= set(prompts.serves(fold_training_prompts(model_folder, f, prompts.train_mode)))
    return tuple(m for m in PROMPT_MODES if m in allowed)


def serving_defaults(cfg: DeSAMConfig, modes: Sequence[str]) -> PromptSettings:
    """The plans' prompt defaults, in a mode the model was trained for (box-trained models predict boxes)."""
    mode = cfg.prompts.predict_mode if cfg.prompts.predict_mode in modes or not modes else modes[0]
    return PromptSettings.from_plans(cfg, mode=mode)


@dataclass(frozen=True)
class InferenceConfiguration:
    """What ``desam_find_best_configuration`` chose: the prompts (None for a prompt-free family) and nnU-Net's
    postprocessing."""

    path: str
    prompts: Optional[PromptSettings]
    postprocessing: Tuple[Tuple[str, Dict], ...]  # (nnU-Net function name, its kwargs), applied in order
    folds: Tuple[str, ...]
    dice: Optional[float]

    def postprocessing_functions(self) -> Tuple[List[Callable], List[dict]]:
        """nnU-Net's ``(pp_fns, pp_fn_kwargs)``, for its ``apply_postprocessing``."""
        return [POSTPROCESSING[name] for name, _ in self.postprocessing], [dict(kw) for _, kw in self.postprocessing]

    def describe(self) -> str:
        p = self.prompts
        prompts = "no prompts" if p is None else "whole-box prompts" if p.mode == "box" else \
            f"grid {p.grid_points_per_side}x{p.grid_points_per_side}, IoU >= {p.iou_threshold:g}, top-{p.top_k}" \
            + (", coarse to fine" if p.coarse_grid else "")
        pp = "; ".join(f"largest component of {_labels(kw)}" for _, kw in self.postprocessing) or "no postprocessing"
        dice = f", cross-validation Dice {self.dice:.4f}" if self.dice is not None else ""
        return f"{prompts}, {pp} (folds {', '.join(self.folds)}{dice})"


def _labels(kwargs: dict) -> str:
    v = kwargs.get("labels_or_regions")
    return "labels " + ", ".join(str(i) for i in v) if isinstance(v, list) else f"label {v}"


def postprocessing_to_json(pp_fns: Sequence[Callable], pp_kwargs: Sequence[dict]) -> List[dict]:
    steps = [{"function": fn.__name__, "kwargs": copy.deepcopy(kw)} for fn, kw in zip(pp_fns, pp_kwargs)]
    for step in steps:
        recursive_fix_for_json_export(step)  # nnU-Net's own: numpy ints in the label lists
    return steps


def write_configuration(model_folder: str, data: dict) -> str:
    path = os.path.join(model_folder, FILE)
    atomic_write_json(dict(data, version=VERSION), path)
    return path


def read_configuration(model_folder: str, trained_modes: Sequence[str], labels: Sequence[int],
                       prompted: bool = True) -> Optional[InferenceConfiguration]:
    """The chosen configuration, None when there is none; DeSAMInputError when it is damaged or no longer fits.
    ``prompted``: the model's family takes prompts (its configuration must choose them; a prompt-free one's not)."""
    path = os.path.join(model_folder, FILE)
    if not os.path.isfile(path):
        return None
    fix = "rerun desam_find_best_configuration, or delete it to use the plans' defaults"
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} desam_inference.json")
        p = data["prompts"]
        if (p is None) == prompted:
            raise ValueError("chooses prompts for a prompt-free model" if p is not None else
                             "chooses no prompts, but the model is prompted")
        prompts = None if p is None else PromptSettings(
            mode=str(p["mode"]), grid_points_per_side=_int(p["grid_points_per_side"]),
            iou_threshold=_float(p["iou_threshold"]), top_k=_int(p["top_k"]))
        pp = []
        for step in data["postprocessing"]:
            name, kwargs = step["function"], step["kwargs"]
            if name not in POSTPROCESSING:
                raise ValueError(f"unknown postprocessing function {name!r}")
            targets = kwargs["labels_or_regions"]
            targets = targets if isinstance(targets, list) else [targets]
            if not targets or any(isinstance(t, bool) or not isinstance(t, int) or t not in labels for t in targets):
                raise ValueError(f"postprocessing labels {kwargs['labels_or_regions']} are not this model's "
                                 f"foreground labels {list(labels)}")
            pp.append((name, dict(kwargs)))
        folds = tuple(str(f) for f in data["folds"])
        dice = data.get("dice", {}).get("selected")
        expected_sha = data["plans_sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DeSAMInputError(f"{path}: corrupt inference configuration ({' '.join(str(e).split())[:200]}); {fix}") \
            from e
    if expected_sha != plans_sha256(model_folder):
        raise DeSAMInputError(f"{path}: chosen for other plans than {os.path.join(model_folder, 'plans.json')}; {fix}")
    if prompts is not None and prompts.mode not in trained_modes:
        raise DeSAMInputError(f"{path}: chooses {prompts.mode} prompts, but the folds were trained for "
                              f"{', '.join(trained_modes) or 'none'}; {fix}")
    return InferenceConfiguration(path, prompts, tuple(pp), folds, None if dice is None else float(dice))


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{v!r} is not an integer")
    return v


def _float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{v!r} is not a number")
    return float(v)
