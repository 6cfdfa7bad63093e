"""Benchmark: the prediction options that trade exactness for speed, against the exact decode, on trained models.

What is measured, per option: hippocampus fold-0 validation volumes of the race's DeSAM models (``dice_budget.py``'s
kept folder trees), preprocessed once and predicted in this process by ``DeSAMPredictor`` with and without the
option, the order alternating per volume so that both see the same load (no TTA, 2 CPU threads). Dice per class on
the preprocessed grid against the preprocessed reference (hippocampus is planned at its own spacing, so this is
nnU-Net's ``summary.json`` Dice: the 30-minute model's box mode gives 0.6553 both ways) and seconds per volume.

- ``bf16`` (``desam_predict --bf16``): the image encoder under bfloat16 autocast, on the 30-minute model in the
  mode its ``desam_find_best_configuration`` chose (box). Needs a CPU with bf16 arithmetic.
- ``onnxruntime``: DeSAM's encoder in ONNX Runtime (``desam_predict``'s default on a CPU since it was measured here,
  exact: the reference is PyTorch's encoder), on the 30-minute model in box mode.
- ``coarse_grid`` (``desam_predict --coarse-grid``): grid mode's PRIM coarse to fine, on the 120-minute model (the
  one whose grid mode keeps prompts), at the plans' default (IoU >= 0.5, top-1) and at the best grid setting of
  its cross-validation (IoU >= -1, top-1).

The issue's rule (#22): an option that changes the numbers becomes a default only if mean Dice moves by less than
0.002; otherwise it stays an option with its cost written here.

    python benchmarks/prediction_options.py --options bf16 --cases 40
    python benchmarks/prediction_options.py --options coarse_grid --cases 10
    python benchmarks/prediction_options.py --options onnxruntime --cases 20
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from prompted_boxes import model_folder  # noqa: E402
from results_file import invocation_args, record_run  # noqa: E402
from train import DATASET  # noqa: E402

HERE = Path(__file__).resolve().parent
RULE = 0.002  # |mean Dice change| below which an inexact option may become a default
# option -> (the race budget of its model, [(setting name, prompt overrides)], the option's settings, the
# reference's); a setting is a DeSAMPredictor keyword (PREDICTOR_KEYWORDS) or a prompt override
OPTIONS: Dict[str, tuple] = {
    "bf16": (30, [("chosen (box)", {})], {"bf16": True}, {}),
    "coarse_grid": (120, [("grid IoU >= 0.5, top-1 (plans' default)", {"mode": "grid", "iou_threshold": 0.5}),
                          ("grid IoU >= -1, top-1 (best grid)", {"mode": "grid", "iou_threshold": -1.0})],
                    {"coarse_grid": True}, {}),
    # exact, and the default since it was measured: the reference is PyTorch's encoder
    "onnxruntime": (30, [("chosen (box)", {})], {"onnx": True}, {"onnx": False}),
}
PREDICTOR_KEYWORDS = ("bf16", "onnx")


def tree_of(work: Path, minutes: float, race_cases: int = 200) -> Path:
    """dice_budget.py's kept tree of DeSAM's race at ``minutes`` on ``race_cases`` cases."""
    return work / f"desam_{minutes:g}min_{race_cases}cases"


def _dice(pred: np.ndarray, ref: np.ndarray, labels: List[int]) -> List[float]:
    """Dice per label (nan where both are empty, as nnU-Net)."""
    out = []
    for c in labels:
        a, b = pred == c, ref == c
        total = int(a.sum() + b.sum())
        out.append(float("nan") if total == 0 else 2 * int((a & b).sum()) / total)
    return out


def measure(option: str, tree: Path, cases: int) -> List[dict]:
    """One row per setting of ``option`` on the DeSAM model of ``tree``: Dice per class and seconds per volume,
    exact against the option."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from tqdm import tqdm

    from desam_nnu.inference.predictor import DeSAMPredictor

    _, settings, switch, reference = OPTIONS[option]
    folder = model_folder(tree, "desam")
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"error: {folder}: no trained fold 0; run python benchmarks/dice_budget.py --runs desam "
                         f"first")
    pre = tree / "nnUNet_preprocessed" / DATASET.name
    keys = load_json(pre / "splits_final.json")[0]["val"][:cases]
    dataset = infer_dataset_class(str(pre / "DeSAMPlans_desam_2d"))(str(pre / "DeSAMPlans_desam_2d"), keys)
    rows = []
    for name, prompts in settings:
        predictors = {}
        for variant, extra in (("exact", reference), ("option", switch)):
            p = DeSAMPredictor(use_mirroring=False, allow_tqdm=False,
                               prompt_overrides={**prompts, **{k: v for k, v in extra.items()
                                                               if k not in PREDICTOR_KEYWORDS}},
                               **{k: v for k, v in extra.items() if k in PREDICTOR_KEYWORDS})
            p.initialize_from_trained_model_folder(str(folder), [0], "checkpoint_final.pth")
            predictors[variant] = p
        labels = [int(c) for c in predictors["exact"].label_manager.foreground_labels]
        dice: Dict[str, list] = {"exact": [], "option": []}
        seconds = {"exact": 0.0, "option": 0.0}
        for i, key in enumerate(tqdm(keys, desc=f"{option}: {name}")):
            data, seg, _, _ = dataset.load_case(key)
            data = torch.from_numpy(np.asarray(data))
            for variant in (("exact", "option") if i % 2 == 0 else ("option", "exact")):
                start = time.perf_counter()
                logits, _ = predictors[variant].predict_case(data)
                seconds[variant] += time.perf_counter() - start
                dice[variant].append(_dice(logits.float().argmax(0).numpy(), np.asarray(seg)[0], labels))
        race = tree.name.split("_")[1].replace("min", "-minute")
        row = {"option": option, "setting": name, "model": f"DeSAM, {race} race", "cases": len(keys),
               "command": " ".join(["python", "benchmarks/prediction_options.py", *invocation_args()])}
        for variant, field in (("exact", "exact"), ("option", "with_option")):
            per_class = np.nanmean(np.array(dice[variant], dtype=float), axis=0)
            row[field] = {"dice_per_class": {str(c): round(float(d), 4) for c, d in zip(labels, per_class)},
                            "dice": round(float(per_class.mean()), 4),
                            "s_per_volume": round(seconds[variant] / len(keys), 2)}
        row["dice_change"] = round(row["with_option"]["dice"] - row["exact"]["dice"], 4)
        row["within_rule"] = abs(row["dice_change"]) < RULE
        rows.append(row)
        print(f"{option} {name}: Dice {row['exact']['dice']:.4f} -> {row['with_option']['dice']:.4f}, "
              f"s/volume {row['exact']['s_per_volume']} -> {row['with_option']['s_per_volume']}", flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument("--cases", type=int, default=10, help="the first N of fold 0's validation volumes")
    ap.add_argument("--minutes", type=float, default=None,
                    help="the race budget of every option's model (default: each option's own, above)")
    ap.add_argument("--race-cases", type=int, default=200, help="the race's case count (its trees' names)")
    ap.add_argument("--race-work", type=Path, default=HERE / "work" / "dice_budget", help="the race's kept trees")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "prediction_options.json")
    args = ap.parse_args(argv)
    trees = {o: tree_of(args.race_work, args.minutes or OPTIONS[o][0], args.race_cases) for o in args.options}
    tree = trees[args.options[0]]
    os.environ.update(nnUNet_raw=str(tree / "nnUNet_raw"), nnUNet_preprocessed=str(tree / "nnUNet_preprocessed"),
                      nnUNet_results=str(tree / "nnUNet_results"), nnUNet_compile="f")
    import torch

    bf16 = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if "bf16" in args.options and not bf16:
        print("bf16 skipped: this CPU has no bf16 arithmetic (avx512_bf16 or AMX)", file=sys.stderr)
    rows = [row for option in args.options if option != "bf16" or bf16
            for row in measure(option, trees[option], args.cases)]
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "bf16_arithmetic": bf16,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
    record_run(args.out, {"meta": meta, "rows": rows}, "prediction_options.py", argv)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
