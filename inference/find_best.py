"""desam_find_best_configuration: DeSAM's inference choices made from cross-validation, as nnU-Net's
``find_best_configuration`` makes its own (for a prompt-free family such as DAPSAM: the postprocessing alone).

From the folds' stored validation candidates (``inference/candidates.py``) every candidate setting
(whole-box prompts, and the grid at each IoU threshold and top-k of the plans' search, within the
prompt modes the folds were trained for) is replayed through nnU-Net's own sliding window and export
into one cross-validation folder and scored with nnU-Net's metrics, with no network run. Settings that
keep the same prompts on every tile give the same outputs and are scored once. The best mean Dice
wins (ties: the earlier candidate, the plans' default first); nnU-Net's ``determine_postprocessing``
then decides per class whether keeping the largest component helps. The choice is written whole into
``desam_inference.json`` in the model folder, which ``desam_predict`` follows.
"""
import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from tqdm import tqdm

from desam_nnu.config import CONFIGURATION, PLANS_NAME, plans_configuration
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference import candidates
from desam_nnu.inference.configuration import plans_sha256, postprocessing_to_json, write_configuration
from desam_nnu.inference.model_folder import resolve_model_folder
from desam_nnu.inference.predictor import DeSAMPredictor, export_case_atomically
from desam_nnu.inference.prompted import PROMPT_MODES, PromptSettings
from desam_nnu.model import select_kept
from desam_nnu.paths import env_dir
from desam_nnu.planners.plans import DeSAMPlansManager


@dataclass
class Candidate:
    """One setting and its cross-validation Dice (mean over foreground classes; per class)."""

    prompts: PromptSettings
    dice: float = float("nan")
    dice_per_class: Optional[Dict[str, float]] = None
    same_as: Optional[str] = None  # label of an earlier candidate with identical outputs

    @property
    def label(self) -> str:
        p = self.prompts
        return "box" if p.mode == "box" else f"grid iou>={p.iou_threshold:g} top-{p.top_k}"


def candidate_settings(default: PromptSettings, modes: Sequence[str], thresholds: Sequence[float],
                       top_ks: Sequence[int]) -> List[PromptSettings]:
    """The sweep, the plans' default first (it wins ties), only in trained modes."""
    out: List[PromptSettings] = []
    if default.mode in modes:
        out.append(default)
    if "grid" in modes:
        out += [replace(default, mode="grid", iou_threshold=float(t), top_k=int(k)) for k in top_ks for t in thresholds]
    if "box" in modes:
        out.append(replace(default, mode="box"))
    unique: List[PromptSettings] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique


def _signature(prompts: PromptSettings, ious: List[np.ndarray]) -> str:
    """What a grid setting keeps on every stored tile (per class, how many prompts): equal signatures,
    equal outputs."""
    if prompts.mode == "box":
        return "box"
    h = hashlib.sha256()
    for iou in ious:  # [T, K, C]
        kept = select_kept(torch.from_numpy(iou).movedim(1, 0), prompts.iou_threshold, prompts.top_k)
        h.update(kept.sum(0).to(torch.int16).numpy().tobytes())
    return h.hexdigest()


def model_folder_of(dataset: Union[int, str], trainer: Optional[str], plans: str) -> Tuple[str, str, str]:
    """(dataset name, model folder, trainer): without ``trainer`` the model desam_predict -d would use."""
    folder = resolve_model_folder(None, dataset, trainer, plans)
    return os.path.basename(os.path.dirname(folder)), folder, os.path.basename(folder).split("__")[0]


def find_best_configuration(dataset: Union[int, str], folds: Sequence[Union[int, str]] = (0, 1, 2, 3, 4),
                            trainer: Optional[str] = None, plans: str = PLANS_NAME, num_processes: int = 1,
                            allow_tqdm: bool = True) -> dict:
    """Choose prompts and postprocessing from the folds' validation; write and return the configuration."""
    start = time.perf_counter()
    name, folder, trainer = model_folder_of(dataset, trainer, plans)
    plans_manager = DeSAMPlansManager(load_json(join(folder, "plans.json")))
    configuration_manager = plans_manager.get_configuration(plans_configuration(plans_manager.plans))
    cfg = configuration_manager.desam
    folds = [str(f) for f in folds]
    if cfg.prompts is None:  # a prompt-free family (DAPSAM)
        return prompt_free_postprocessing(name, folder, folds, trainer, plans, num_processes, start)
    metas: Dict[str, dict] = {}
    for f in folds:
        meta = candidates.read_meta(candidates.store_folder(join(folder, f"fold_{f}", "validation")))
        if meta is not None:
            metas[f] = meta
    missing = [f for f in folds if f not in metas]
    if missing:
        raise DeSAMInputError(f"{folder}: no stored validation results for fold(s) {', '.join(missing)}; make them "
                              f"with desam_train {dataset} FOLD --val (after training that fold)")
    dataset_json = load_json(join(folder, "dataset.json"))
    modes = tuple(m for m in PROMPT_MODES if all(m in metas[f]["modes"] for f in folds))
    top_k = min(int(metas[f]["top_k"]) for f in folds)
    grids = {int(metas[f]["grid_points_per_side"]) for f in folds}
    if len(grids) != 1 or not modes:
        raise DeSAMInputError(f"{folder}: the folds' stored validation candidates do not agree (grid sizes "
                              f"{sorted(grids)}, prompt modes {[metas[f]['modes'] for f in folds]}); rerun "
                              f"desam_train {dataset} FOLD --val for each")
    default = PromptSettings.from_plans(cfg, mode=cfg.prompts.predict_mode if cfg.prompts.predict_mode in modes
                                        else modes[0], grid_points_per_side=grids.pop())
    settings = candidate_settings(default, modes, cfg.prompts.iou_threshold_candidates,
                                  [k for k in cfg.prompts.top_k_candidates if k <= top_k])
    pre_root = env_dir("nnUNet_preprocessed")
    data_folder = join(pre_root, name, configuration_manager.data_identifier)
    gt_folder = join(pre_root, name, "gt_segmentations")
    for needed in (data_folder, gt_folder):
        if not os.path.isdir(needed):
            raise DeSAMInputError(f"{needed}: missing; the selection replays the preprocessed validation cases "
                                  f"(run desam_plan_and_preprocess -d {dataset})")
    cases = [(f, case) for f in folds for case in metas[f]["cases"]]
    stores = {(f, case): join(candidates.store_folder(join(folder, f"fold_{f}", "validation")), case + ".npz")
              for f, case in cases}
    for path in stores.values():
        if not os.path.isfile(path):
            raise DeSAMInputError(f"{path}: stored validation candidates missing; rerun desam_train {dataset} "
                                  f"FOLD --val")

    # settings that keep the same prompts everywhere give the same outputs: score each distinct one once
    ious = [candidates.load_grid_iou(p) for p in stores.values()] if "grid" in modes else []
    table = [Candidate(p) for p in settings]
    first_of: Dict[str, Candidate] = {}
    for c in table:
        sig = _signature(c.prompts, ious)
        if sig in first_of:
            c.same_as = first_of[sig].label
        else:
            first_of[sig] = c
    distinct = list(first_of.values())

    work = join(folder, f".find_best-{os.getpid()}")
    labels = plans_manager.get_label_manager(dataset_json).foreground_labels
    try:
        outputs = {c.label: join(work, f"candidate_{i}") for i, c in enumerate(distinct)}
        for out in outputs.values():
            os.makedirs(out)
        # the references of the validation cases only, so that nnU-Net's postprocessing sees the whole set
        references = join(work, "references")
        os.makedirs(references)
        ending = dataset_json["file_ending"]
        for _, case in cases:
            os.symlink(os.path.abspath(join(gt_folder, case + ending)), join(references, case + ending))
        _replay_all(cases, stores, metas, distinct, outputs, folder, plans_manager, configuration_manager,
                    dataset_json, data_folder, allow_tqdm)
        rw = plans_manager.image_reader_writer_class()
        for c in tqdm(distinct, desc="Scoring candidates", disable=not allow_tqdm):
            m = compute_metrics_on_folder(references, outputs[c.label], join(outputs[c.label], "summary.json"), rw,
                                          ending, labels, None, num_processes, chill=True)
            c.dice = float(m["foreground_mean"]["Dice"])
            c.dice_per_class = {str(k): float(v["Dice"]) for k, v in m["mean"].items()}
        for c in table:
            if c.same_as is not None:
                twin = next(t for t in distinct if t.label == c.same_as)
                c.dice, c.dice_per_class = twin.dice, twin.dice_per_class
        best = max(distinct, key=lambda c: (np.nan_to_num(c.dice, nan=-1.0), -distinct.index(c)))
        pp_fns, pp_kwargs = determine_postprocessing(outputs[best.label], references, plans_manager.plans,
                                                     dataset_json, max(1, num_processes),
                                                     keep_postprocessed_files=False)
        after = load_json(join(outputs[best.label], "postprocessing.json"))["postprocessed"]
        after_per_class = {str(k): float(v["Dice"]) for k, v in after["mean"].items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    result = {
        "created_by": "desam_find_best_configuration",
        "dataset": name, "trainer": trainer, "plans": plans, "configuration": CONFIGURATION,
        "folds": folds, "plans_sha256": plans_sha256(folder),
        "training_prompts": {f: metas[f]["training_prompts"] for f in folds},
        "prompts": asdict(best.prompts),
        "postprocessing": postprocessing_to_json(pp_fns, pp_kwargs),
        "dice": {"selected": best.dice, "after_postprocessing": float(after["foreground_mean"]["Dice"]),
                 "after_postprocessing_per_class": after_per_class,
                 "plans_default": table[0].dice if table[0].prompts == default else None},
        "candidates": [{"prompts": asdict(c.prompts), "label": c.label, "dice": c.dice,
                        "dice_per_class": c.dice_per_class, "same_outputs_as": c.same_as} for c in table],
        "validation_cases": len(cases),
        "seconds": seconds,
    }
    result["path"] = write_configuration(folder, result)
    result["table"] = render_table(table, best, result)
    return result


def prompt_free_postprocessing(name: str, folder: str, folds: Sequence[str], trainer: str, plans: str,
                               num_processes: int, start: float) -> dict:
    """A prompt-free family has no prompts to choose: only nnU-Net's postprocessing, decided as its own
    ``find_best_configuration`` decides it, on the folds' final-validation outputs merged into one folder."""
    dataset_json = load_json(join(folder, "dataset.json"))
    plans_dict = load_json(join(folder, "plans.json"))
    ending = dataset_json["file_ending"]
    gt_folder = join(env_dir("nnUNet_preprocessed"), name, "gt_segmentations")
    found = {f: sorted(n for n in os.listdir(v) if n.endswith(ending)) if os.path.isdir(v) else []
             for f, v in ((f, join(folder, f"fold_{f}", "validation")) for f in folds)}
    missing = [f for f, names in found.items() if not names]
    if missing:
        raise DeSAMInputError(f"{folder}: no final validation for fold(s) {', '.join(missing)}; make it with "
                              f"desam_train {name} FOLD --val (after training that fold)")
    if not os.path.isdir(gt_folder):
        raise DeSAMInputError(f"{gt_folder}: missing; the references are the preprocessed ground truth (run "
                              f"desam_plan_and_preprocess -d {name})")
    # nnU-Net's accumulate_cv_results merges the same way, but reads nnUNet_raw when nnunetv2 is first imported
    # and copies every file; links in a scratch folder leave the model folder as it was
    work = join(folder, f".find_best-{os.getpid()}")
    merged, references = join(work, "crossval"), join(work, "references")
    try:
        os.makedirs(merged)
        os.makedirs(references)
        for f, names in found.items():
            for n in names:
                if os.path.lexists(join(merged, n)):
                    raise DeSAMInputError(f"{folder}: {n} is in the validation of more than one of folds "
                                          f"{', '.join(folds)}")
                os.symlink(os.path.abspath(join(folder, f"fold_{f}", "validation", n)), join(merged, n))
                os.symlink(os.path.abspath(join(gt_folder, n)), join(references, n))
        pp_fns, pp_kwargs = determine_postprocessing(merged, references, plans_dict, dataset_json,
                                                     max(1, num_processes), keep_postprocessed_files=False)
        pp = load_json(join(merged, "postprocessing.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    before, after = pp["input_folder"], pp["postprocessed"]
    result = {
        "created_by": "desam_find_best_configuration",
        "dataset": name, "trainer": trainer, "plans": plans, "configuration": plans_configuration(plans_dict),
        "folds": list(folds), "plans_sha256": plans_sha256(folder), "prompts": None,
        "postprocessing": postprocessing_to_json(pp_fns, pp_kwargs),
        "dice": {"selected": float(before["foreground_mean"]["Dice"]),
                 "selected_per_class": {str(k): float(v["Dice"]) for k, v in before["mean"].items()},
                 "after_postprocessing": float(after["foreground_mean"]["Dice"]),
                 "after_postprocessing_per_class": {str(k): float(v["Dice"]) for k, v in after["mean"].items()}},
        "candidates": [], "validation_cases": sum(len(n) for n in found.values()),
        "seconds": time.perf_counter() - start,
    }
    result["path"] = write_configuration(folder, result)
    result["table"] = (f"prompt-free: no prompts to choose; postprocessing: {_pp_text(result['postprocessing'])}; "
                       f"Dice {result['dice']['selected']:.4f} -> {result['dice']['after_postprocessing']:.4f} after "
                       f"postprocessing; {result['validation_cases']} validation cases, {result['seconds']:.1f} s")
    return result


def _pp_text(steps: List[dict]) -> str:
    return ("; ".join(f"keep the largest component of {s['kwargs']['labels_or_regions']}" for s in steps)
            or "none (it did not help)")


def _replay_all(cases, stores, metas: Dict[str, dict], distinct: List[Candidate], outputs: Dict[str, str], folder: str,
                plans_manager, configuration_manager, dataset_json: dict, data_folder: str, allow_tqdm: bool) -> None:
    """Every validation case, loaded once, through nnU-Net's sliding window and export for each distinct setting."""
    dataset = infer_dataset_class(data_folder)(data_folder, sorted({case for _, case in cases}))
    num_classes = len(plans_manager.get_label_manager(dataset_json).foreground_labels)
    trainer_name = os.path.basename(folder).split("__")[0]
    predictors: Dict[str, DeSAMPredictor] = {}
    for f, meta in metas.items():  # one per fold: its validation's sliding-window settings
        predictors[f] = DeSAMPredictor(tile_step_size=float(meta["tile_step_size"]),
                                       use_mirroring=bool(meta["use_mirroring"]), allow_tqdm=False)
        predictors[f].manual_initialization(None, plans_manager, configuration_manager, None, dataset_json,
                                            trainer_name, tuple(meta["mirror_axes"]) or None)
    for f, case in tqdm(cases, desc=f"Replaying {len(distinct)} distinct settings", unit="case",
                        disable=not allow_tqdm):
        meta = metas[f]
        record = candidates.load_case(stores[(f, case)], tuple(meta["modes"]), int(meta["top_k"]))
        data, _, _, properties = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data))
        for c in distinct:
            replay = candidates.CandidateReplay(num_classes, record, c.prompts, stores[(f, case)])
            predictors[f].network = replay
            logits = predictors[f].predict_sliding_window_return_logits(data)
            replay.check_finished()
            export_case_atomically(logits.cpu(), properties, configuration_manager, plans_manager, dataset_json,
                                   outputs[c.label], case, False)


def render_table(table: List[Candidate], best: Candidate, result: dict) -> str:
    """Every candidate and its cross-validation Dice; the chosen one starred."""
    classes = list(table[0].dice_per_class or {})
    head = f"{'':2}{'prompts':<26}{'mean Dice':>10}" + "".join(f"{'class ' + k:>10}" for k in classes)
    lines = [head]
    for c in table:
        per = "".join(f"{(c.dice_per_class or {}).get(k, float('nan')):>10.4f}" for k in classes)
        note = f"  (= {c.same_as})" if c.same_as else ""
        lines.append(f"{'*' if c is best else ' ':2}{c.label:<26}{c.dice:>10.4f}{per}{note}")
    pp = result["postprocessing"]
    lines.append(f"chosen: {best.label}; postprocessing: {_pp_text(pp)}"
                 + f"; Dice {result['dice']['selected']:.4f} -> {result['dice']['after_postprocessing']:.4f} "
                   f"after postprocessing; {result['validation_cases']} validation cases, {result['seconds']:.1f} s")
    return "\n".join(lines)
