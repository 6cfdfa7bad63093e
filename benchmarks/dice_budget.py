"""Benchmark: hippocampus fold-0 validation Dice after the same CPU time budget, DeSAM against nnU-Net's 2D U-Net.

Both train on fold 0 of ../shared/datasets/Dataset004_Hippocampus (nnU-Net's 5-fold split, the same
``splits_final.json`` for both since both plan from the same fingerprint) for ``--minutes`` of
training (per-epoch validation included, final validation not), in epochs of ``--iterations``
iterations, then predict the 40 validation volumes and score them with nnU-Net's metrics:

- DeSAM: ``desam_train 4 0 --time-budget M`` (default ``--backbone tiny --train-encoder``: a random
  ViT trained end to end, online encoding; ``--prompt-mode`` as given), final validation in the
  plans' default mode for the training prompts (grid, IoU threshold 0.5, best prompt, for points),
  storing every tile's candidates; then ``desam_find_best_configuration 4 -f 0`` chooses the prompts
  and postprocessing from them (its table: every candidate's Dice, and the seconds it took, against
  the validation pass). ``--also-default-predict`` predicts the volumes with ``desam_predict`` and no
  prompt flags, i.e. the chosen configuration (the default path). ``--also-no-threshold`` also predicts the same
  volumes with the IoU threshold off (``--iou-thresh -1``: the best grid prompt always decodes), which
  separates the quality of the masks from the calibration of PRIM's predicted IoU;
  ``--also-box-prompt`` predicts them with one whole-tile box per slice.
- nnU-Net: ``nnUNetv2_train 4 2d 0 -tr nnUNetTrainer_TimeBudget`` (nnU-Net's trainer, stopped by the
  same budget; ``benchmarks/nnunet_trainers/``), its own final validation (mirroring on).

The budget is CPU time of the training process by default (``--clock cpu``: both trainers run
their augmentation in-process, ``nnUNet_n_proc_DA=0``, so that the process's CPU time is all of
it), which stays fair when something else shares the machine; ``--clock wall`` uses wall time.
Runs one after the other. Each row is merged into benchmarks/results/dice_budget.json under its
own key (model, backbone, input size, prompt mode, budget, cases), so several invocations build one
table.

    python benchmarks/dice_budget.py [--minutes 30] [--backbone tiny] [--runs desam nnunet]
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(__file__))
from train import DATASET  # noqa: E402

from desam_nnu.paths import link_dataset_subset  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def _run(cmd, env, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def _dice(summary_file: Path) -> dict:
    s = json.loads(summary_file.read_text())
    return {"mean": s["foreground_mean"]["Dice"], **{k: v["Dice"] for k, v in s["mean"].items()},
            "cases": len(s["metric_per_case"])}


def _pseudo_dice(log_folder: Path) -> list:
    """The last per-epoch pseudo Dice per class from nnU-Net's training log (empty if none).

    The log line reads ``Pseudo dice [np.float32(0.71), np.float32(0.72)]`` (or plain numbers)."""
    logs = sorted(log_folder.glob("training_log_*.txt"))
    found = re.findall(r"Pseudo dice \[(.*)\]", logs[-1].read_text()) if logs else []
    if not found:
        return []
    return [float(v) for v in re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.sub(r"np\.float\d+", "", found[-1]))]


def _epochs(log_folder: Path) -> int:
    """Epochs started, from nnU-Net's training log (one 'Epoch N' line each)."""
    logs = sorted(log_folder.glob("training_log_*.txt"))
    return len(re.findall(r": Epoch \d+\s*$", logs[-1].read_text(), re.M)) if logs else 0


def label(key: str, row: dict) -> str:
    if key.startswith("nnunet_2d"):
        return "nnU-Net 2D U-Net (nnUNetTrainer), mirroring"
    enc = "train-encoder" if row["train_encoder"] else "frozen encoder"
    return f"DeSAM {row['backbone']} {row['image_size']} px ({row['prompt_mode']}, {enc})"


def print_table(rows: dict) -> None:
    print("| model | budget | epochs | Dice class 1 | Dice class 2 | mean Dice | train + val wall |")
    print("|---|---|---|---|---|---|---|")
    for key, row in rows.items():
        # the final validation predicts in the plans' grid mode, whatever the training prompts were
        variants = [(label(key, row) + (", grid IoU >= 0.5" if row.get("prompt_mode") else ""), row["dice"])]
        fb = row.get("find_best")
        if fb:
            after = {"mean": fb["dice"]["after_postprocessing"], **fb["dice"]["after_postprocessing_per_class"]}
            variants = [(label(key, row) + f", chosen by desam_find_best_configuration: {fb['label']}"
                         + (", largest component" if fb["postprocessing"] else ""), after)]
            if fb.get("grid_0.5_top1"):
                variants.append((label(key, row) + ", grid IoU >= 0.5 (replayed)", fb["grid_0.5_top1"]))
            if fb.get("box"):
                variants.append((label(key, row) + ", whole-tile box (replayed)", fb["box"]))
        if row.get("dice_default_predict"):
            variants.append((label(key, row) + ", desam_predict with no prompt flags", row["dice_default_predict"]))
        if row.get("dice_no_iou_threshold"):
            variants.append((label(key, row) + ", best grid prompt always", row["dice_no_iou_threshold"]))
        if row.get("dice_box_prompt"):
            variants.append((label(key, row) + ", whole-tile box prompts", row["dice_box_prompt"]))
        for name, d in variants:
            print(f"| {name} | {row['minutes']:g} {row['clock']} min, {row['cases']} cases | {row['epochs']} | "
                  f"{d['1']:.3f} | {d['2']:.3f} | {d['mean']:.3f} | {row['wall_s_train_and_validation'] / 60:.1f} min |")


def _predict_validation(env: dict, logs: Path, name: str, prompt_args: List[str]) -> Tuple[Optional[dict], float]:
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


def _log_time(line: str) -> float:
    stamp = line.split(": ", 1)[0]
    return time.mktime(time.strptime(stamp.split(".")[0], "%Y-%m-%d %H:%M:%S")) + float("0." + stamp.split(".")[1])


def _validation_seconds(log_folder: Path) -> Optional[float]:
    """Wall seconds of the final validation pass, from the timestamps of nnU-Net's training log."""
    logs = sorted(log_folder.glob("training_log_*.txt"))
    lines = logs[-1].read_text().splitlines() if logs else []
    start = [ln for ln in lines if ": Final validation with" in ln]
    end = [ln for ln in lines if ": Validation complete" in ln]
    return _log_time(end[-1]) - _log_time(start[-1]) if start and end else None


def _find_best(env: dict, logs: Path, fold: Path) -> dict:
    """``desam_find_best_configuration 4 -f 0``: the chosen setting, the Dice of every candidate of interest
    (from its table: the replay of the stored validation candidates) and the seconds it took."""
    seconds = _run([BIN / "desam_find_best_configuration", "4", "-f", "0"], env, logs / "find_best.log")
    chosen = json.loads((fold.parent / "desam_inference.json").read_text())

    def per_class(c: dict) -> dict:
        return {"mean": c["dice"], **(c["dice_per_class"] or {})}

    table = {c["label"]: per_class(c) for c in chosen["candidates"]}
    return {"seconds": seconds, "validation_pass_s": _validation_seconds(fold), "prompts": chosen["prompts"],
            "label": next(c["label"] for c in chosen["candidates"] if c["prompts"] == chosen["prompts"]),
            "dice": chosen["dice"], "postprocessing": chosen["postprocessing"],
            "grid_0.5_top1": table.get("grid iou>=0.5 top-1"), "box": table.get("box"),
            "candidates": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30, help="training budget (minutes of --clock time)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--iterations", type=int, default=50, help="DeSAM iterations per epoch")
    p.add_argument("--nnunet-iterations", type=int, default=5,
                   help="nnU-Net iterations per epoch (its 2D batch is ~366 slices: short epochs meet the budget)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--image-size", type=int, default=None, help="DeSAM input size (default: the planner's)")
    p.add_argument("--also-no-threshold", action="store_true",
                   help="also predict DeSAM's validation volumes with the best grid prompt always decoded")
    p.add_argument("--also-box-prompt", action="store_true",
                   help="also predict DeSAM's validation volumes with one whole-tile box per slice")
    p.add_argument("--prompt-mode", default="points", choices=["points", "box", "mixed"])
    p.add_argument("--no-find-best", action="store_true",
                   help="skip desam_find_best_configuration (the choice of prompts from the fold-0 validation)")
    p.add_argument("--also-default-predict", action="store_true",
                   help="also predict DeSAM's validation volumes with desam_predict and no prompt flags (the chosen "
                        "configuration)")
    p.add_argument("--frozen-encoder", action="store_true", help="DeSAM's recipe (frozen encoder) instead of --train-encoder")
    p.add_argument("--no-cache", action="store_true", help="with --frozen-encoder: encode online instead of the cache")
    p.add_argument("--cases", type=int, default=None, help="first N cases only (a quick check; default all 200)")
    p.add_argument("--runs", nargs="+", default=["desam", "nnunet"], choices=["desam", "nnunet"])
    p.add_argument("--work", type=Path, default=None, help="keep nnU-Net folders here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "dice_budget.json")
    args = p.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    tmp = tempfile.TemporaryDirectory(prefix="bench_dice_") if args.work is None else None
    work = Path(tmp.name if tmp else args.work)
    base = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="0", DESAM_BUDGET_CLOCK=args.clock,
                DESAM_BENCH_BUDGET_MIN=str(args.minutes), DESAM_BENCH_ITERS=str(args.nnunet_iterations),
                DESAM_BENCH_VAL_ITERS="1")
    rows = {}
    for run in args.runs:
        env = dict(base)
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env[k] = str(work / run / k)
            os.makedirs(env[k], exist_ok=True)
        raw = Path(env["nnUNet_raw"]) / DATASET.name
        if not raw.exists():
            link_dataset_subset(str(DATASET), env["nnUNet_raw"], args.cases)
        logs = work / run
        print(f"{run}: planning", flush=True)
        if run == "desam":
            plan = [BIN / "desam_plan_and_preprocess", "-d", "4", "-np", "2", "--backbone", args.backbone]
            if args.image_size:
                plan += ["--image-size", args.image_size]
            _run(plan, env, logs / "plan.log")
            train = [BIN / "desam_train", "4", "0", "-device", "cpu", "--time-budget", args.minutes, "--epochs", 1000,
                     "--iterations", args.iterations, "--val-iterations", 10, "--prompt-mode", args.prompt_mode]
            if not args.frozen_encoder:
                train.append("--train-encoder")
            elif args.no_cache:
                train.append("--no-cache")
            fold = Path(env["nnUNet_results"]) / DATASET.name / "DeSAMTrainer__DeSAMPlans__desam_2d" / "fold_0"
        else:
            # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA, which must not be 0 there
            _run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "2d", "-np", "2"],
                 dict(env, nnUNet_n_proc_DA="2"), logs / "plan.log")
            env["nnUNet_extTrainer"] = str(HERE / "nnunet_trainers")
            train = [BIN / "nnUNetv2_train", "4", "2d", "0", "-device", "cpu", "-tr", "nnUNetTrainer_TimeBudget"]
            fold = Path(env["nnUNet_results"]) / DATASET.name / "nnUNetTrainer_TimeBudget__nnUNetPlans__2d" / "fold_0"
        print(f"{run}: training {args.minutes} min + final validation", flush=True)
        wall = _run(train, env, logs / "train.log")
        per_epoch = args.iterations if run == "desam" else args.nnunet_iterations
        row = {"wall_s_train_and_validation": wall, "epochs": _epochs(fold), "iterations_per_epoch": per_epoch, "last_pseudo_dice": _pseudo_dice(fold),
               "dice": _dice(fold / "validation" / "summary.json"), "minutes": args.minutes, "clock": args.clock,
               "cases": args.cases or 200, "cpus": os.cpu_count(), "machine": platform.machine(),
               "command": "python " + " ".join(sys.argv)}
        if run == "desam":
            plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET.name / "DeSAMPlans.json").read_text())
            desam_cfg = plans["configurations"]["desam_2d"]["desam"]
            row.update(backbone=args.backbone, prompt_mode=args.prompt_mode, train_encoder=not args.frozen_encoder,
                       features="online" if not args.frozen_encoder or args.no_cache else "cache",
                       image_size=desam_cfg["image_size"])
        if run == "desam" and not args.no_find_best:
            row["find_best"] = _find_best(env, logs, fold)
        if run == "desam" and args.also_default_predict:
            # the default path: no prompt flags, so desam_predict follows the chosen configuration
            row["dice_default_predict"], row["predict_s_per_volume_default"] = _predict_validation(
                env, logs, "default", [])
        if run == "desam" and args.also_no_threshold:
            # the same validation volumes, the best grid prompt always decoded (no IoU threshold)
            row["dice_no_iou_threshold"], row["predict_s_per_volume_no_threshold"] = _predict_validation(
                env, logs, "no_threshold", ["--iou-thresh", "-1"])
        if run == "desam" and args.also_box_prompt:
            # the same validation volumes, one whole-tile box per slice instead of the plans' grid
            row["dice_box_prompt"], row["predict_s_per_volume_box_prompt"] = _predict_validation(
                env, logs, "box_prompt", ["--prompt-mode", "box"])
        budget = f"{args.minutes:g}{args.clock}_{args.cases or 200}cases"
        key = f"nnunet_2d_{budget}" if run == "nnunet" else (
            f"desam_{args.backbone}_{row['image_size']}_{args.prompt_mode}_"
            f"{'train_encoder' if row['train_encoder'] else 'frozen'}_{budget}")
        rows[key] = row
        print(f"{key}: {json.dumps(row)}", flush=True)
    merged = json.loads(args.out.read_text()).get("rows", {}) if args.out.is_file() else {}
    merged = {k: v for k, v in merged.items() if "clock" in v}  # rows of the older wall-clock format are dropped
    merged.update(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"note": "hippocampus fold 0; one row per model, each after its own training "
                                            "budget (see each row's minutes and clock)", "rows": merged}, indent=2))
    print_table(merged)
    print(f"written {args.out}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
