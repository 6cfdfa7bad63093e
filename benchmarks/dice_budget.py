"""Benchmark: hippocampus fold-0 validation Dice after the same CPU time budget, DeSAM against nnU-Net's 2D U-Net.

Both train on fold 0 of ../shared/datasets/Dataset004_Hippocampus (nnU-Net's 5-fold split, the same
``splits_final.json`` for both since both plan from the same fingerprint) for ``--minutes`` of
training (per-epoch validation included, final validation not), in epochs of ``--iterations``
iterations, then predict the 40 validation volumes and score them with nnU-Net's metrics:

- DeSAM: ``desam_train 4 0 --time-budget M`` (default ``--backbone tiny --train-encoder``: a random
  ViT trained end to end, online encoding; ``--prompt-mode`` as given), final validation in the
  plans' grid mode (IoU threshold 0.5, best prompt). The same volumes are also predicted with the
  IoU threshold off (``--iou-thresh -1``: the best grid prompt always decodes), which separates the
  quality of the masks from the calibration of PRIM's predicted IoU.
- nnU-Net: ``nnUNetv2_train 4 2d 0 -tr nnUNetTrainer_TimeBudget`` (nnU-Net's trainer, stopped by the
  same budget; ``benchmarks/nnunet_trainers/``), its own final validation (mirroring on).

Runs one after the other, so each has the machine to itself. Prints a table, writes
benchmarks/results/dice_budget.json.

    python benchmarks/dice_budget.py [--minutes 15] [--iterations 50] [--backbone tiny] [--runs desam nnunet]
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


def _epochs(log_folder: Path) -> int:
    """Epochs started, from nnU-Net's training log (one 'Epoch N' line each)."""
    logs = sorted(log_folder.glob("training_log_*.txt"))
    return len(re.findall(r": Epoch \d+\s*$", logs[-1].read_text(), re.M)) if logs else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--iterations", type=int, default=50, help="iterations per epoch (both)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--prompt-mode", default="points", choices=["points", "box"])
    p.add_argument("--frozen-encoder", action="store_true", help="DeSAM's recipe (cache) instead of --train-encoder")
    p.add_argument("--cases", type=int, default=None, help="first N cases only (a quick check; default all 200)")
    p.add_argument("--runs", nargs="+", default=["desam", "nnunet"], choices=["desam", "nnunet"])
    p.add_argument("--work", type=Path, default=None, help="keep nnU-Net folders here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "dice_budget.json")
    args = p.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    tmp = tempfile.TemporaryDirectory(prefix="bench_dice_") if args.work is None else None
    work = Path(tmp.name if tmp else args.work)
    base = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="1", DESAM_BENCH_BUDGET_MIN=str(args.minutes),
                DESAM_BENCH_ITERS=str(args.iterations), DESAM_BENCH_VAL_ITERS="10")
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
            _run([BIN / "desam_plan_and_preprocess", "-d", "4", "-np", "2", "--backbone", args.backbone], env,
                 logs / "plan.log")
            train = [BIN / "desam_train", "4", "0", "-device", "cpu", "--time-budget", args.minutes, "--epochs", 1000,
                     "--iterations", args.iterations, "--val-iterations", 10, "--prompt-mode", args.prompt_mode]
            if not args.frozen_encoder:
                train.append("--train-encoder")
            fold = Path(env["nnUNet_results"]) / DATASET.name / "DeSAMTrainer__DeSAMPlans__desam_2d" / "fold_0"
        else:
            _run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "2d", "-np", "2"], env, logs / "plan.log")
            env["nnUNet_extTrainer"] = str(HERE / "nnunet_trainers")
            train = [BIN / "nnUNetv2_train", "4", "2d", "0", "-device", "cpu", "-tr", "nnUNetTrainer_TimeBudget"]
            fold = Path(env["nnUNet_results"]) / DATASET.name / "nnUNetTrainer_TimeBudget__nnUNetPlans__2d" / "fold_0"
        print(f"{run}: training {args.minutes} min + final validation", flush=True)
        wall = _run(train, env, logs / "train.log")
        row = {"wall_s_train_and_validation": wall, "epochs": _epochs(fold), "dice": _dice(fold / "validation" / "summary.json")}
        if run == "desam":
            # the same validation volumes, the best grid prompt always decoded (no IoU threshold)
            split = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET.name / "splits_final.json").read_text())[0]
            images = logs / "val_images"
            images.mkdir(exist_ok=True)
            for case in split["val"]:
                link = images / f"{case}_0000.nii.gz"
                if not link.exists():
                    link.symlink_to(DATASET / "imagesTr" / f"{case}_0000.nii.gz")
            pred = logs / "pred_no_threshold"
            start = time.perf_counter()
            _run([BIN / "desam_predict", "-i", images, "-o", pred, "-d", "4", "-f", "0", "--iou-thresh", "-1",
                  "--disable-tta", "-device", "cpu"], env, logs / "predict.log")
            row["predict_s_per_volume_no_threshold"] = (time.perf_counter() - start) / len(split["val"])
            _run([BIN / "desam_evaluate", "-ref", DATASET / "labelsTr", "-pred", pred], env, logs / "evaluate.log")
            row["dice_no_iou_threshold"] = _dice(pred / "summary.json")
        rows[run] = row
        print(f"{run}: {json.dumps(row)}", flush=True)
    label = f"DeSAM {args.backbone} ({args.prompt_mode}, {'frozen encoder' if args.frozen_encoder else 'train-encoder'})"
    print(f"\nhippocampus ({args.cases or 200} cases) fold 0, {args.minutes:g} min CPU training budget, "
          f"{os.cpu_count()} cores, epochs of {args.iterations} iterations")
    print("| model | epochs | Dice class 1 | Dice class 2 | mean Dice | train + val wall |")
    print("|---|---|---|---|---|---|")
    for run, row in rows.items():
        variants = [(f"{label}, grid IoU >= 0.5", row["dice"]), (f"{label}, best grid prompt always",
                                                                  row.get("dice_no_iou_threshold"))] \
            if run == "desam" else [("nnU-Net 2D U-Net (nnUNetTrainer), mirroring", row["dice"])]
        for name, d in variants:
            if d:
                print(f"| {name} | {row['epochs']} | {d['1']:.3f} | {d['2']:.3f} | {d['mean']:.3f} | "
                      f"{row['wall_s_train_and_validation'] / 60:.1f} min |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "minutes": args.minutes,
                                    "iterations_per_epoch": args.iterations, "backbone": args.backbone,
                                    "prompt_mode": args.prompt_mode, "train_encoder": not args.frozen_encoder,
                                    "rows": rows, "command": "python " + " ".join(sys.argv)}, indent=2))
    print(f"written {args.out}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
