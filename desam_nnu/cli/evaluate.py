"""``desam_evaluate -ref LABELS -pred OUT``: nnU-Net's metrics (plus surface Dice) for a folder of predictions.

``desam_evaluate -ref LABELS --prompts-from-labels PROMPTS.json``: a simulated user's prompts file instead, for
measuring prompted accuracy (``desam_predict --prompts``) as MedSAM and DB-SAM measure it."""
import argparse
import json
import os
from typing import Optional, Tuple, Union

from desam_nnu.cli.common import command_main
from desam_nnu.config import PLANS_NAME
from desam_nnu.errors import DeSAMInputError
from desam_nnu.paths import resolve_dataset_name


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DeSAMInputError(f"{path}: cannot read JSON ({e})") from None


def _dataset_files(dataset: Union[int, str]) -> Tuple[str, Optional[str]]:
    """dataset.json and DeSAMPlans.json of a dataset: $nnUNet_preprocessed first, then dataset.json in $nnUNet_raw."""
    roots = [(v, os.environ.get(v)) for v in ("nnUNet_preprocessed", "nnUNet_raw")]
    roots = [(v, r) for v, r in roots if r]
    if not roots:
        raise DeSAMInputError("-d needs nnUNet_preprocessed or nnUNet_raw: export it (nnU-Net's folder layout; "
                              "see the README), or leave -d out to read dataset.json from the prediction folder")
    tried, error = [], None
    for _, root in roots:
        try:
            name = resolve_dataset_name(dataset, root)
        except DeSAMInputError as e:
            error = error or e
            continue
        dataset_json = os.path.join(root, name, "dataset.json")
        plans = os.path.join(root, name, PLANS_NAME + ".json")
        if os.path.isfile(dataset_json):
            return dataset_json, plans if os.path.isfile(plans) else None
        tried.append(dataset_json)
    if tried:
        raise DeSAMInputError(f"{' and '.join(tried)}: not found")
    raise error


def _reader_writer(plans: Optional[dict], dataset_json: dict, example_file: str):
    """The plans' reader/writer (as desam_predict wrote the files); without plans, nnU-Net's guess from the files."""
    if plans is not None:
        from desam_nnu.planners.plans import DeSAMPlansManager
        return DeSAMPlansManager(plans).image_reader_writer_class()
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    try:
        return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)()
    except RuntimeError:
        return SimpleITKIO()


def evaluate(ref: str, pred: str, dataset: Optional[Union[int, str]] = None, output: Optional[str] = None,
             nsd_tolerance: Optional[float] = None, num_processes: int = 1) -> dict:
    """Evaluate ``pred`` against ``ref``, write the summary (default ``<pred>/summary.json``), print the table."""
    from desam_nnu.inference.evaluate import evaluate_folder, format_table

    for folder, what in ((ref, "reference folder"), (pred, "prediction folder")):
        if not os.path.isdir(folder):
            raise DeSAMInputError(f"{folder}: {what} does not exist")
    if dataset is None:
        dataset_file = os.path.join(pred, "dataset.json")
        if not os.path.isfile(dataset_file):
            raise DeSAMInputError(f"{dataset_file}: not found; desam_predict writes it there, "
                                  f"or give the dataset with -d")
        plans_file = os.path.join(pred, "plans.json")
        plans_file = plans_file if os.path.isfile(plans_file) else None
    else:
        dataset_file, plans_file = _dataset_files(dataset)
    dataset_json = _load_json(dataset_file)
    for key in ("labels", "file_ending"):
        if key not in dataset_json:
            raise DeSAMInputError(f"{dataset_file}: no {key!r} entry")
    ending = dataset_json["file_ending"]
    examples = sorted(f for f in os.listdir(pred) if f.endswith(ending))
    if not examples:
        raise DeSAMInputError(f"{pred}: no predictions (*{ending}) to evaluate")
    rw = _reader_writer(_load_json(plans_file) if plans_file else None, dataset_json,
                        os.path.join(pred, examples[0]))
    summary = evaluate_folder(ref, pred, dataset_json, rw, output or os.path.join(pred, "summary.json"),
                              num_processes=num_processes, nsd_tolerance_mm=nsd_tolerance)
    print(format_table(summary, dataset_json["labels"]))
    return summary


def prompts_from_reference(ref: str, path: str, dataset: Optional[Union[int, str]] = None,
                           mode: str = "box-per-slice", jitter_mm: float = 0.0, seed: int = 0) -> dict:
    """Write the simulated user's prompts for the label maps in ``ref`` to ``path``; print what it holds."""
    from desam_nnu.inference.simulated_prompts import (count_prompts, foreground_labels, prompts_from_labels,
                                                       write_prompts)

    if not os.path.isdir(ref):
        raise DeSAMInputError(f"{ref}: reference folder does not exist")
    if dataset is not None:
        dataset_file = _dataset_files(dataset)[0]
    else:  # nnU-Net's raw layout: labelsTr beside dataset.json
        dataset_file = os.path.join(os.path.dirname(os.path.abspath(ref)), "dataset.json")
        if not os.path.isfile(dataset_file):
            raise DeSAMInputError(f"{dataset_file}: not found; give the dataset with -d")
    dataset_json = _load_json(dataset_file)
    for key in ("labels", "file_ending"):
        if key not in dataset_json:
            raise DeSAMInputError(f"{dataset_file}: no {key!r} entry")
    document = prompts_from_labels(ref, dataset_json["file_ending"], foreground_labels(dataset_json), mode,
                                   jitter_mm, seed)
    write_prompts(document, path)
    names = {int(v): k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    kind = "clicks" if mode == "click" else "boxes"
    counts = ", ".join(f"{names.get(c, c)} {n}" for c, n in count_prompts(document).items()) or "none"
    print(f"{path}: {len(document['cases'])} cases, {mode}, jitter {jitter_mm:g} mm, seed {seed}; "
          f"{kind} per class: {counts}")
    return document


def _run(ref: str, pred: Optional[str], dataset: Optional[Union[int, str]], output: Optional[str],
         nsd_tolerance: Optional[float], num_processes: int, prompts_from_labels: Optional[str],
         prompt_mode: str, jitter_mm: float, seed: int) -> object:
    """Evaluate, or with --prompts-from-labels write the prompts file (and evaluate nothing)."""
    if prompts_from_labels is None:
        if pred is None:
            raise DeSAMInputError("-pred is required: the folder of predictions to evaluate "
                                  "(or --prompts-from-labels PROMPTS.json to write a simulated user's prompts)")
        return evaluate(ref, pred, dataset, output, nsd_tolerance, num_processes)
    unused = [flag for flag, value in (("-pred", pred), ("-o", output), ("--nsd-tolerance", nsd_tolerance))
              if value is not None]
    if unused:
        raise DeSAMInputError(f"{', '.join(unused)}: nothing is evaluated with --prompts-from-labels "
                              f"(it only writes the prompts file); leave {'them' if len(unused) > 1 else 'it'} out")
    return prompts_from_reference(ref, prompts_from_labels, dataset, prompt_mode, jitter_mm, seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desam_evaluate", description="Score predicted label maps against the "
                                "references with nnU-Net's metrics (Dice, IoU, ...) and optionally the normalised "
                                "surface Dice; writes nnU-Net's summary.json and prints a table.")
    p.add_argument("-ref", required=True, help="folder with the reference label maps (e.g. labelsTs)")
    p.add_argument("-pred", default=None, help="folder with the predictions (same file names); required unless "
                   "--prompts-from-labels")
    p.add_argument("-d", dest="dataset", default=None,
                   help="dataset id (4) or name (Dataset004_Hippocampus): dataset.json and DeSAMPlans.json from "
                        "$nnUNet_preprocessed (or $nnUNet_raw); default: dataset.json and plans.json in -pred "
                        "(with --prompts-from-labels: dataset.json beside -ref)")
    p.add_argument("-o", dest="output", default=None, help="summary file (default: <pred>/summary.json)")
    p.add_argument("--nsd-tolerance", type=float, default=None, metavar="MM",
                   help="also compute the normalised surface Dice at this tolerance in mm")
    p.add_argument("-np", type=int, default=1, dest="num_processes", help="worker processes (default 1)")
    g = p.add_argument_group("simulated users", "write a prompts file for desam_predict --prompts from -ref's "
                             "labels, instead of evaluating")
    g.add_argument("--prompts-from-labels", default=None, metavar="PROMPTS.json",
                   help="write the prompts of a simulated user to this file and evaluate nothing")
    g.add_argument("--prompt-mode", choices=("box-per-slice", "box-per-range", "click"), default="box-per-slice",
                   help="a box per class per slice (default; MedSAM, DB-SAM), one per contiguous run of slices, "
                        "or a click at the centre of the class on each slice")
    g.add_argument("--jitter-mm", type=float, default=0.0, metavar="MM",
                   help="move each box side outward by a random 0..MM mm (default 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the jitter (default 0)")
    return p


main = command_main(build_parser, _run)


if __name__ == "__main__":
    raise SystemExit(main())
