"""Benchmark: validation Dice after training from an int8 cache against a float16 cache.

Same hippocampus subset, fold 0, backbone, seeds, batches and prompts; only the cached features
differ (per-channel int8 quantisation vs float16). Two Dice figures: whole validation volumes in
the plans' grid mode (nnU-Net's summary.json), and the pseudo Dice of the last epochs (validation
slices prompted with one point, as in training; nnU-Net's EMA), which isolates the mask quality. Prints the table and writes
benchmarks/results/cache_dice.json.

    python benchmarks/cache_dice.py [--backbone tiny] [--cases 40] [--epochs 4] [--iterations 50]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from train import DATASET, _link_subset  # noqa: E402
from results_file import record_run  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--out", type=Path, default=HERE / "results" / "cache_dice.json")
    args = p.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    bindir = Path(sys.executable).parent
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cache_dice_") as tmp:
        env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="1")
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env[k] = os.path.join(tmp, k)
            os.makedirs(env[k])
        _link_subset(Path(env["nnUNet_raw"]), args.cases)
        subprocess.run([str(bindir / "desam_plan_and_preprocess"), "-d", "4", "-np", "2", "--backbone",
                        args.backbone], env=env, check=True, capture_output=True)
        for dtype in ("float16", "int8"):
            results = Path(env["nnUNet_results"])
            for old in results.glob("*"):
                subprocess.run(["rm", "-rf", str(old)], check=True)
            start = time.perf_counter()
            done = subprocess.run([str(bindir / "desam_train"), "4", "0", "-device", "cpu", "--epochs",
                                   str(args.epochs), "--iterations", str(args.iterations), "--val-iterations", "20",
                                   "--cache-dtype", dtype],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"error: training with {dtype} failed:\n{done.stderr[-3000:]}")
            fold = next(results.glob("*/*/fold_0"))
            summary = json.loads((fold / "validation" / "summary.json").read_text())
            import torch
            log = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
            rows.append({"dtype": dtype, "seconds": time.perf_counter() - start,
                         "dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()},
                         "mean_dice": summary["foreground_mean"]["Dice"],
                         "pseudo_dice_per_class": [float(x) for x in log["dice_per_class_or_region"][-1]],
                         "pseudo_dice_ema": float(log["ema_fg_dice"][-1])})
            print(f"  {dtype}: volume Dice {rows[-1]['mean_dice']:.4f}, pseudo Dice (EMA) "
                  f"{rows[-1]['pseudo_dice_ema']:.4f}", flush=True)
    diff = rows[1]["mean_dice"] - rows[0]["mean_dice"]
    diff_pseudo = rows[1]["pseudo_dice_ema"] - rows[0]["pseudo_dice_ema"]
    print(f"\nvalidation Dice, hippocampus fold 0 of {args.cases} cases, {args.backbone}, "
          f"{args.epochs} x {args.iterations} iterations")
    print("| cache | volume Dice 1 | volume Dice 2 | volume mean | pseudo Dice 1 | pseudo Dice 2 | pseudo EMA |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        d, q = r["dice_per_class"], r["pseudo_dice_per_class"]
        print(f"| {r['dtype']} | {d['1']:.4f} | {d['2']:.4f} | {r['mean_dice']:.4f} | {q[0]:.4f} | {q[1]:.4f} | "
              f"{r['pseudo_dice_ema']:.4f} |")
    print(f"int8 - float16: volume {diff:+.4f}, pseudo (EMA) {diff_pseudo:+.4f}")
    record_run(args.out, {"backbone": args.backbone, "cases": args.cases, "epochs": args.epochs,
                          "iterations": args.iterations, "rows": rows, "int8_minus_float16": diff,
                          "int8_minus_float16_pseudo_ema": diff_pseudo}, "cache_dice.py")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
