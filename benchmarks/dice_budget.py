"""Benchmark: hippocampus fold-0 Dice after the same wall-clock training budget, DeSAM against nnU-Net's 2D U-Net.

What is measured: for each budget of ``--minutes`` (default 30), each tool plans and preprocesses
``../shared/datasets/Dataset004_Hippocampus``, trains on fold 0 of nnU-Net's 5-fold split (the same
``splits_final.json`` for both: both plan from the same fingerprint), runs its final validation
on the fold's validation volumes, then chooses its postprocessing (and DeSAM its prompts) from them
with its own ``find_best_configuration``. A row's Dice is per class (1 anterior, 2 posterior) and
their mean, scored by nnU-Net's metrics after that choice. Planning, the setup before the first
training step, training, the final validation and the choice are timed separately (wall seconds);
iterations and seconds per iteration (training wall / iterations) come from the trainers' logs.

How it is fair: each tool runs as its users run it, with the same wall-clock budget for training
(from the first training step to the last), one after the other on the same machine (which must
be otherwise quiet: the budget is wall time), each in a fresh nnU-Net folder tree (no cache or
plans carried over from an earlier run):

- nnU-Net: ``nnUNetv2_plan_and_preprocess -d 4 -c 2d -np 2``, then ``nnUNetv2_train 4 2d 0 -device cpu
  -tr T`` with its augmentation in background workers (``nnUNet_n_proc_DA=2``, ``nnUNet_compile=f``),
  then ``nnUNetv2_find_best_configuration 4 -c 2d -tr T -f 0``. T is nnU-Net's own trainer with the
  number of epochs whose whole schedule (250 iterations each, learning rate decaying to 0) fits the
  budget: floor(budget / ``--nnunet-epoch-seconds``), at least 1 (default 2530 s: the 30-minute
  race's one 2D epoch on the 200 cases, 2528 s on 2026-12-01, this 2-core CPU); its shipped
  ``nnUNetTrainer_1epoch`` for one epoch, else
  its ``nnUNetTrainer_{N}epochs``, or for 2-4 epochs ours of the same kind from
  ``benchmarks/nnunet_trainers/`` (found through ``nnUNet_extTrainer``; only ``num_epochs`` differs).
- DeSAM: ``desam_plan_and_preprocess -d 4 -np 2`` (default backbone medsam_lite), ``desam_train 4 0
  -device cpu --time-budget M`` with ``DESAM_BUDGET_CLOCK=wall`` and the trainer's own defaults
  (epoch length, cache or online encoding, prompts; recorded from its ``desam_options.json``), then
  ``desam_find_best_configuration 4 -f 0``. Its budget counts from its setup on (the embedding cache
  build included) and its last epoch is shortened to what fits; its log's ``Budget spent: ...``
  line, kept verbatim, says where the time went.
- DAPSAM (``--runs dapsam``): the same with ``desam_plan_and_preprocess -d 4 -np 2 --family dapsam``, whose
  plans make ``desam_train`` use ``DAPSAMTrainer`` (the official recipe); prompt-free, so
  ``desam_find_best_configuration`` chooses only nnU-Net's postprocessing.
- DB-SAM (``--runs dbsam``): the same with ``--family dbsam`` (``DBSAMTrainer``, the official recipe); its final
  validation and the choice use its automatic mode, a box over each whole tile per class.
- MaskSAM (``--runs masksam``): the same with ``--family masksam`` (``MaskSAMTrainer`` on the ``masksam_3d``
  configuration, nnU-Net's 3D loader with ``nnUNet_n_proc_DA=2`` as nnU-Net's race); prompt-free.

Each row is merged into benchmarks/results/dice_budget.json under the key (tool, budget, cases) as
soon as it is measured; the table printed at the end has one line per budget, the two tools side by
side.

    python benchmarks/dice_budget.py --minutes 30 60 120   # about 2 x 3.5 h of training, plus the rest
    python benchmarks/dice_budget.py --cases 10 --minutes 1  # a quick check of the pipeline (one epoch each)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(__file__))
from report import BY_NAME, md_table  # noqa: E402
from report_dice_budget import budget_table, dice_rows, plot_curve  # noqa: E402
from results_file import combined, invocation_args, read_runs, record_run  # noqa: E402
from train import DATASET  # noqa: E402

from desam_nnu.config import plans_configuration  # noqa: E402
from desam_nnu.paths import link_dataset_subset  # noqa: E402
from desam_nnu.trainers import default_trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
NNUNET_ITERATIONS = 250  # nnUNetTrainer's iterations per epoch
NNUNET_FULL_SCHEDULE = 1000  # nnUNetTrainer's epochs
CLOCK = "wall"  # the marker of this format's rows in the JSON


# ------------------------------------------------------------------------------------------ commands
def _run(cmd: Sequence, env: dict, log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; wall seconds. Exits on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def _shown(cmd: Sequence, env_shown: Dict[str, str]) -> str:
    """``cmd`` as typed: environment settings first, executables by name."""
    words = [Path(str(c)).name if i == 0 else str(c) for i, c in enumerate(cmd)]
    return " ".join([f"{k}={v}" for k, v in env_shown.items()] + words)


def nnunet_epochs(budget_s: float, epoch_s: float) -> int:
    """The epochs of nnU-Net's schedule that fit the budget: floor(budget / seconds per epoch), 1 to 1000."""
    return max(1, min(NNUNET_FULL_SCHEDULE, int(budget_s // epoch_s)))


SHIPPED_EPOCHS = (5, 10, 20, 50, 100, 250, 500, 750)  # nnU-Net's nnUNetTrainer_Xepochs
OURS_EPOCHS = (2, 3, 4)  # benchmarks/nnunet_trainers/nnUNetTrainer_Nepochs.py


def nnunet_trainer(epochs: int) -> str:
    """nnU-Net's trainer for ``epochs`` epochs: its shipped ones, or ours for 2-4 (the same kind of class)."""
    if epochs == 1:
        return "nnUNetTrainer_1epoch"
    if epochs >= NNUNET_FULL_SCHEDULE:
        return "nnUNetTrainer"
    if epochs not in SHIPPED_EPOCHS + OURS_EPOCHS:
        sys.exit(f"error: no nnU-Net trainer with {epochs} epochs; pass --nnunet-epochs with one of "
                 f"{', '.join(map(str, sorted((1,) + SHIPPED_EPOCHS + OURS_EPOCHS)))}")
    return f"nnUNetTrainer_{epochs}epochs"


# ------------------------------------------------------------------------------------------ logs and results
def _dice(summary_file: Path) -> dict:
    """Dice per class, their mean and the number of volumes from an nnU-Net ``summary.json``."""
    s = json.loads(summary_file.read_text())
    return {"mean": s["foreground_mean"]["Dice"], **{k: v["Dice"] for k, v in s["mean"].items()},
            "cases": len(s["metric_per_case"])}


def _log_lines(fold: Path) -> List[Tuple[float, str]]:
    """(POSIX time, message) of each timestamped line of the fold's nnU-Net-format training log."""
    logs = sorted(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    out = []
    for line in logs[-1].read_text().splitlines() if logs else []:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?): (.*)$", line)
        if m:  # nnU-Net writes datetime.fromtimestamp(time()): local time, read back the same way
            out.append((datetime.fromisoformat(m.group(1)).timestamp(), m.group(2).strip()))
    return out


def log_times(fold: Path, command_start: float) -> dict:
    """Epochs finished, per-epoch seconds and the wall seconds of setup, training and final validation.

    Training runs from the first ``Epoch N`` line (the first step follows it) to ``Training done.``;
    the final validation from there to ``Validation complete``; setup from the command's start to
    the first epoch. ``budget_spent`` is DeSAM's ``Budget spent: ...`` line, verbatim, if written.
    """
    lines = _log_lines(fold)
    first = next((t for t, msg in lines if re.fullmatch(r"Epoch \d+", msg)), None)
    done = next((t for t, msg in lines if msg == "Training done."), None)
    valid = next((t for t, msg in reversed(lines) if msg == "Validation complete"), None)
    epoch_s = [float(m.group(1)) for _, msg in lines for m in [re.match(r"Epoch time: ([\d.]+) s", msg)] if m]
    budget = next((msg[msg.index("Budget spent:"):] for _, msg in lines if "Budget spent:" in msg), None)
    return {"epochs": len(epoch_s), "epoch_s": epoch_s,
            "setup_s": first - command_start if first is not None else None,
            "train_wall_s": done - first if first is not None and done is not None else None,
            "validation_s": valid - done if done is not None and valid is not None else None,
            "budget_spent": budget}


def budget_iterations(budget_spent: Optional[str]) -> Optional[int]:
    """The iterations DeSAM's ``Budget spent: ...; N iterations, S s each`` line counts (its last epoch may be
    shortened), or None without the line."""
    m = re.search(r"; (\d+) iterations, ", budget_spent or "")
    return int(m.group(1)) if m else None


def _pseudo_dice(fold: Path) -> List[float]:
    """The last per-epoch pseudo Dice per class from the training log (empty if none).

    The log line reads ``Pseudo dice [np.float32(0.71), np.float32(0.72)]`` (or plain numbers)."""
    found = [msg for _, msg in _log_lines(fold) if msg.startswith("Pseudo dice [")]
    if not found:
        return []
    return [float(v) for v in re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.sub(r"np\.float\d+", "", found[-1][12:]))]


def _find_best(env: dict, logs: Path, fold: Path, validation_s: Optional[float]) -> dict:
    """``desam_find_best_configuration 4 -f 0``: the chosen setting, the Dice of every candidate of interest
    (from its table: the replay of the stored validation candidates) and the seconds it took."""
    seconds = _run([BIN / "desam_find_best_configuration", "4", "-f", "0"], env, logs / "find_best.log")
    chosen = json.loads((fold.parent / "desam_inference.json").read_text())

    def per_class(c: dict) -> dict:
        return {"mean": c["dice"], **(c["dice_per_class"] or {})}

    table = {c["label"]: per_class(c) for c in chosen["candidates"]}
    label = next((c["label"] for c in chosen["candidates"] if c["prompts"] == chosen["prompts"]), "prompt-free")
    return {"seconds": seconds, "validation_pass_s": validation_s, "prompts": chosen["prompts"], "label": label,
            "dice": chosen["dice"], "postprocessing": chosen["postprocessing"],
            "grid_0.5_top1": table.get("grid iou>=0.5 top-1"), "box": table.get("box"),
            "candidates": table}


def _predict_validation(env: dict, logs: Path, name: str, prompt_args: List[str]) -> Tuple[dict, float]:
    """``desam_predict`` (no TTA) on fold 0's validation volumes, scored by ``desam_evaluate``:
    (Dice per class, seconds per volume)."""
    split = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET.name / "splits_final.json").read_text())[0]
    images = logs / "val_images"
    images.mkdir(exist_ok=True)
    for case in split["val"]:
        link = images / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(DATASET / "imagesTr" / f"{case}_0000.nii.gz")
    pred = logs / f"pred_{name}"
    start = time.perf_counter()
    _run([BIN / "desam_predict", "-i", images, "-o", pred, "-d", "4", "-f", "0", *prompt_args,
          "--disable-tta", "-device", "cpu"], env, logs / f"predict_{name}.log")
    seconds = (time.perf_counter() - start) / len(split["val"])
    _run([BIN / "desam_evaluate", "-ref", DATASET / "labelsTr", "-pred", pred], env, logs / f"evaluate_{name}.log")
    return _dice(pred / "summary.json"), seconds


# ------------------------------------------------------------------------------------------ one tool, one budget
def _fresh_env(folder: Path, cases: Optional[int]) -> dict:
    """A fresh nnU-Net folder tree in ``folder`` (emptied first) with the dataset's first ``cases`` linked in."""
    if folder.exists():
        shutil.rmtree(folder)
    env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="2")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = str(folder / k)
        os.makedirs(env[k])
    link_dataset_subset(str(DATASET), env["nnUNet_raw"], cases)
    return env


def race_nnunet(folder: Path, minutes: float, cases: Optional[int], epochs: int) -> dict:
    """nnU-Net's plan, train (``epochs`` epochs of its schedule), final validation and postprocessing choice."""
    env = _fresh_env(folder, cases)
    env["nnUNet_extTrainer"] = str(HERE / "nnunet_trainers")
    trainer = nnunet_trainer(epochs)
    plan = [BIN / "nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "2d", "-np", "2"]
    train = [BIN / "nnUNetv2_train", "4", "2d", "0", "-device", "cpu", "-tr", trainer]
    find_best = [BIN / "nnUNetv2_find_best_configuration", "4", "-c", "2d", "-tr", trainer, "-f", "0"]
    print(f"nnunet, {minutes:g} min: planning", flush=True)
    planning_s = _run(plan, env, folder / "plan.log")
    print(f"nnunet, {minutes:g} min: training {trainer} ({epochs} x {NNUNET_ITERATIONS} iterations) + final "
          "validation", flush=True)
    start = time.time()
    command_s = _run(train, env, folder / "train.log")
    model = Path(env["nnUNet_results"]) / DATASET.name / f"{trainer}__nnUNetPlans__2d"
    times = log_times(model / "fold_0", start)
    print(f"nnunet, {minutes:g} min: nnUNetv2_find_best_configuration", flush=True)
    find_best_s = _run(find_best, env, folder / "find_best.log")
    pp = json.loads((model / "crossval_results_folds_0" / "postprocessing.json").read_text())
    after = pp["postprocessed"]
    final = _dice(model / "fold_0" / "validation" / "summary.json")
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET.name / "nnUNetPlans.json").read_text())
    shown = {"nnUNet_n_proc_DA": "2", "nnUNet_compile": "f", "nnUNet_extTrainer": "benchmarks/nnunet_trainers"}
    return dict(times, tool="nnunet", trainer=trainer, planned_epochs=epochs,
                iterations_per_epoch=NNUNET_ITERATIONS, batch_size=plans["configurations"]["2d"]["batch_size"],
                dice={"mean": after["foreground_mean"]["Dice"], **{k: v["Dice"] for k, v in after["mean"].items()},
                      "cases": final["cases"]},
                dice_final_validation=final, postprocessing=pp["postprocessing_fns"],
                last_pseudo_dice=_pseudo_dice(model / "fold_0"), planning_s=planning_s, train_command_s=command_s,
                find_best_s=find_best_s,
                commands={"plan": _shown(plan, {}), "train": _shown(train, shown),
                          "find_best": _shown(find_best, {})})


def race_desam(folder: Path, minutes: float, cases: Optional[int], backbone: Optional[str],
               also_default_predict: bool, family: str = "desam") -> dict:
    """A network family's default plan (``--family``), train for ``minutes`` of wall time with the family's
    default trainer, final validation and the configuration choice: prompts and postprocessing, or for a
    prompt-free family (DAPSAM) the postprocessing alone."""
    env = _fresh_env(folder, cases)
    env["DESAM_BUDGET_CLOCK"] = CLOCK
    if backbone is None:  # the default backbone, whatever SAM checkpoint the environment names
        env.pop("DESAM_SAM_CHECKPOINT", None)
    plan = ([BIN / "desam_plan_and_preprocess", "-d", "4", "-np", "2"] + (["--backbone", backbone] if backbone else [])
            + (["--family", family] if family != "desam" else []))
    train = [BIN / "desam_train", "4", "0", "-device", "cpu", "--time-budget", f"{minutes:g}"]
    print(f"{family}, {minutes:g} min: planning", flush=True)
    planning_s = _run(plan, env, folder / "plan.log")
    print(f"{family}, {minutes:g} min: training + final validation", flush=True)
    start = time.time()
    command_s = _run(train, env, folder / "train.log")
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET.name / "DeSAMPlans.json").read_text())
    configuration = plans_configuration(plans)
    cfg = plans["configurations"][configuration]
    fold = (Path(env["nnUNet_results"]) / DATASET.name / f"{default_trainer(family)}__DeSAMPlans__{configuration}"
            / "fold_0")
    times = log_times(fold, start)
    options_file = fold / "desam_options.json"
    options = json.loads(options_file.read_text()) if options_file.is_file() else None
    final = _dice(fold / "validation" / "summary.json")
    row = dict(times, tool=family, backbone_flag=backbone, backbone=cfg["desam"]["backbone"],
               image_size=cfg["desam"]["image_size"], batch_size=cfg.get("batch_size"), options=options,
               iterations_per_epoch=(options or {}).get("num_iterations_per_epoch"), dice=final,
               dice_final_validation=final, postprocessing=[], last_pseudo_dice=_pseudo_dice(fold),
               planning_s=planning_s, train_command_s=command_s, find_best_s=None,
               commands={"plan": _shown(plan, {}), "train": _shown(train, {"DESAM_BUDGET_CLOCK": CLOCK})})
    print(f"{family}, {minutes:g} min: desam_find_best_configuration", flush=True)
    fb = _find_best(env, folder, fold, times["validation_s"])
    row.update(dice={"mean": fb["dice"]["after_postprocessing"], **fb["dice"]["after_postprocessing_per_class"],
                     "cases": final["cases"]},
               postprocessing=[step["function"] for step in fb["postprocessing"]], find_best_s=fb["seconds"],
               find_best=fb, commands=dict(row["commands"], find_best="desam_find_best_configuration 4 -f 0"))
    if also_default_predict:
        # the default path: no prompt flags, so desam_predict follows the chosen configuration
        row["dice_default_predict"], row["predict_s_per_volume_default"] = _predict_validation(
            env, folder, "default", [])
    return row


# ------------------------------------------------------------------------------------------ main
NOTE = ("hippocampus fold 0; per budget, nnU-Net 2D and DeSAM as their users run them, each trained for the same "
        "wall-clock budget (see each row's minutes), one after the other")


def record_rows(out: Path, rows: Dict[str, dict], argv: Optional[Sequence[str]]) -> Dict[str, dict]:
    """This invocation's ``rows`` so far, recorded as its run (after each row: a race takes hours); every run's
    rows, the newest per key."""
    runs = record_run(out, {"note": NOTE, "rows": rows}, "dice_budget.py", argv)
    return combined(runs, BY_NAME["dice_budget"].merge)["rows"]


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[30.0],
                   help="training budgets in wall minutes, first step to last (default 30); one row per tool and "
                        "budget")
    p.add_argument("--runs", nargs="+", default=["nnunet", "desam"],
                   choices=["nnunet", "desam", "dapsam", "dbsam", "masksam"],
                   help="tools to race, in this order within each budget (default nnunet desam; dapsam, dbsam, "
                        "masksam: those families, planned with --family)")
    p.add_argument("--nnunet-epoch-seconds", type=float, default=2530.0,
                   help="nnU-Net's wall seconds per epoch (250 iterations), for the epochs that fit a budget; "
                        "measured by the 30-minute race on a 2-core CPU with the 200 cases (default 2530)")
    p.add_argument("--nnunet-epochs", type=int, nargs="+", default=None,
                   help="nnU-Net's epochs instead, one for all budgets or one per budget")
    p.add_argument("--backbone", default=None,
                   help="passed to desam_plan_and_preprocess --backbone (default: not passed, i.e. medsam_lite)")
    p.add_argument("--also-default-predict", action="store_true",
                   help="also predict DeSAM's validation volumes with desam_predict and no prompt flags (the chosen "
                        "configuration), timed per volume")
    p.add_argument("--cases", type=int, default=None, help="first N cases only (a quick check; default all 200)")
    p.add_argument("--work", type=Path, default=HERE / "work" / "dice_budget",
                   help="the nnU-Net folder trees, one subfolder per tool and budget, emptied before its run and "
                        "kept after it: robustness.py compares their models (default benchmarks/work/dice_budget)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "dice_budget.json",
                   help="results JSON, merged by row key (default benchmarks/results/dice_budget.json), and beside "
                        "it the Dice-against-training-time plot (.png)")
    p.add_argument("--plot-only", action="store_true", help="race nothing: redraw the plot from the results JSON")
    args = p.parse_args(argv)
    if args.plot_only:
        view = combined(read_runs(args.out), BY_NAME["dice_budget"].merge)
        print(f"written {plot_curve(dice_rows(view)[0], args.out.with_suffix('.png'))}")
        return
    if args.nnunet_epochs and len(args.nnunet_epochs) not in (1, len(args.minutes)):
        p.error("--nnunet-epochs: give one count, or one per budget of --minutes")
    if any(m <= 0 for m in args.minutes) or args.nnunet_epoch_seconds <= 0 or min(args.nnunet_epochs or [1]) < 1:
        p.error("--minutes, --nnunet-epoch-seconds and --nnunet-epochs must be positive")
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    work = args.work
    cases = args.cases or 200
    merged: Dict[str, dict] = {}
    done: Dict[str, dict] = {}  # this invocation's rows
    for i, minutes in enumerate(args.minutes):
        for run in args.runs:
            tag = f"{minutes:g}min_{cases}cases"
            if run == "nnunet":
                epochs = (args.nnunet_epochs[i if len(args.nnunet_epochs) > 1 else 0] if args.nnunet_epochs
                          else nnunet_epochs(minutes * 60, args.nnunet_epoch_seconds))
                key = f"nnunet_2d_{tag}"
                row = race_nnunet(work / key, minutes, args.cases, epochs)
                row["nnunet_epoch_seconds"] = None if args.nnunet_epochs else args.nnunet_epoch_seconds
            else:
                key = f"{run}_{tag}" if args.backbone is None else f"{run}_{args.backbone}_{tag}"
                row = race_desam(work / key, minutes, args.cases, args.backbone, args.also_default_predict, run)
            iterations = budget_iterations(row.get("budget_spent")) or (
                row["epochs"] * row["iterations_per_epoch"] if row.get("iterations_per_epoch") else None)
            wall = row["train_wall_s"]
            row.update(budget_clock=CLOCK, minutes=minutes, budget_s=minutes * 60, cases=cases, iterations=iterations,
                       s_per_iteration=wall / iterations if wall is not None and iterations else None,
                       cpus=os.cpu_count(), machine=platform.machine(),
                       command=" ".join(["python", "benchmarks/dice_budget.py", *invocation_args(argv)]))
            if wall is not None and wall > 1.05 * minutes * 60:
                print(f"note: {key} trained {wall / 60:.1f} min for a budget of {minutes:g} min", flush=True)
            done[key] = row
            merged = record_rows(args.out, done, argv)
            plot_curve(merged, args.out.with_suffix(".png"))
            summary = {k: row.get(k) for k in ("dice", "epochs", "iterations", "s_per_iteration", "planning_s",
                                                 "train_wall_s", "validation_s", "find_best_s", "budget_spent")}
            print(f"{key}: {json.dumps(summary)}", flush=True)
    print(md_table(*budget_table(merged)))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
