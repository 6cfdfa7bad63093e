"""Benchmark: glibc's malloc keeping freed memory (``desam_nnu/allocator.py``, the CPU default) against glibc's own
settings (``DESAM_MALLOC=default``), in prediction with the race's trained DeSAM models.

Each arm runs in a fresh process, because the setting is process-wide and one-way: the process initialises a
``DeSAMPredictor`` on fold 0, predicts one volume to warm up (ONNX export, first allocations), then predicts the
first N fold-0 validation volumes (preprocessed once, no TTA, all CPU threads) and reports seconds per volume, the
kernel's minor page faults per volume (``getrusage``: the mechanism), its peak RSS (VmHWM) and a digest of every
label map. The arms alternate (default, kept, kept, default, ...) over ``--rounds`` rounds, the best round of each
counts. Settings: box mode on the 30-minute model (its chosen mode) and grid mode at IoU >= -1, top-1 on the
120-minute model (its best grid setting), so PRIM runs over all 81 prompts of every tile.

    python benchmarks/allocator.py [--cases 5] [--rounds 2]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prediction_options import _dice, tree_of  # noqa: E402
from predict_inprocess import _peak_rss_mib  # noqa: E402
from prompted_boxes import model_folder  # noqa: E402
from proc_tree import child_result, serve_one  # noqa: E402
from results_file import invocation_args, record_run  # noqa: E402
from train import DATASET  # noqa: E402

HERE = Path(__file__).resolve().parent
# setting -> (the race budget of its model, prompt overrides)
SETTINGS: Dict[str, tuple] = {"box": (30, {"mode": "box"}), "grid": (120, {"mode": "grid", "iou_threshold": -1.0})}
ARMS = {"glibc default": {"DESAM_MALLOC": "default"}, "freed memory kept": {}}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def one_arm(tree: str, setting: str, cases: int) -> dict:
    """In a fresh process: seconds, minor page faults and label digests per volume, peak RSS, Dice."""
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from desam_nnu import allocator
    from desam_nnu.inference.predictor import DeSAMPredictor

    root = Path(tree)
    predictor = DeSAMPredictor(use_mirroring=False, allow_tqdm=False, prompt_overrides=SETTINGS[setting][1])
    predictor.initialize_from_trained_model_folder(str(model_folder(root, "desam")), [0], "checkpoint_final.pth")
    pre = root / "nnUNet_preprocessed" / DATASET.name / "DeSAMPlans_desam_2d"
    keys = load_json(pre.parent / "splits_final.json")[0]["val"][:cases + 1]
    dataset = infer_dataset_class(str(pre))(str(pre), keys)
    labels = [int(c) for c in predictor.label_manager.foreground_labels]
    seconds, faults, digests, dice = [], [], [], []
    for i, key in enumerate(keys):
        data, seg, _, _ = dataset.load_case(key)
        data = torch.from_numpy(np.asarray(data))
        start, faults_before = time.perf_counter(), _minor_faults()
        logits, _ = predictor.predict_case(data)
        if i == 0:
            continue  # warm-up
        seconds.append(time.perf_counter() - start)
        faults.append(_minor_faults() - faults_before)
        label_map = logits.float().argmax(0).numpy().astype(np.uint8)
        digests.append(hashlib.sha1(label_map.tobytes()).hexdigest()[:12])
        dice.append(_dice(label_map, np.asarray(seg)[0], labels))
    return {"kept": allocator.retain_freed_memory(), "s_per_volume": sum(seconds) / len(seconds),
            "minor_faults_per_volume": sum(faults) / len(faults), "peak_rss_mib": _peak_rss_mib(), "digests": digests,
            "dice": float(np.nanmean(np.array(dice, dtype=float))), "threads": torch.get_num_threads()}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5, help="timed volumes (after one warm-up volume)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both arms, alternating; the best counts")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--minutes", type=float, default=None, help="the race budget of every setting's model")
    ap.add_argument("--race-cases", type=int, default=200, help="the race's case count (its trees' names)")
    ap.add_argument("--race-work", type=Path, default=HERE / "work" / "dice_budget", help="the race's kept trees")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "allocator.json")
    ap.add_argument("--one", nargs=3, metavar=("TREE", "SETTING", "CASES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if serve_one(args.one, one_arm):
        return
    rows = []
    for setting in args.settings:
        tree = tree_of(args.race_work, args.minutes or SETTINGS[setting][0], args.race_cases)
        if not (model_folder(tree, "desam") / "fold_0" / "checkpoint_final.pth").is_file():
            sys.exit(f"error: {tree}: no trained DeSAM fold 0; run python benchmarks/dice_budget.py --runs desam first")
        env = dict(os.environ, nnUNet_raw=str(tree / "nnUNet_raw"), nnUNet_compile="f",
                   nnUNet_preprocessed=str(tree / "nnUNet_preprocessed"), nnUNet_results=str(tree / "nnUNet_results"))
        env.pop("DESAM_MALLOC", None)
        runs: Dict[str, List[dict]] = {arm: [] for arm in ARMS}
        order = list(ARMS)
        for r in range(args.rounds):
            for arm in (order if r % 2 == 0 else order[::-1]):
                cmd = [sys.executable, __file__, "--one", str(tree), setting, str(args.cases)]
                runs[arm].append(child_result(cmd, {**env, **ARMS[arm]}, f"{setting}, {arm}"))
                x = runs[arm][-1]
                print(f"{setting}, {arm}: {x['s_per_volume']:.2f} s/volume, {x['minor_faults_per_volume']:.0f} minor "
                      f"page faults/volume, peak RSS {x['peak_rss_mib']:.0f} MiB", flush=True)
        best = {arm: dict(min(xs, key=lambda x: x["s_per_volume"]), all_s=[x["s_per_volume"] for x in xs])
                for arm, xs in runs.items()}
        if any(x["kept"] != (arm != "glibc default") for arm, xs in runs.items() for x in xs):
            sys.exit(f"error: {setting}: an arm did not get its allocator setting")
        same = len({tuple(x["digests"]) for xs in runs.values() for x in xs}) == 1
        race = tree.name.split("_")[1].replace("min", "-minute")
        rows.append({"setting": setting, "model": f"DeSAM, {race} race", "cases": args.cases, "arms": best,
                     "identical_label_maps": same,
                     "speed_up": best["glibc default"]["s_per_volume"] / best["freed memory kept"]["s_per_volume"]})
        print(f"{setting}: {rows[-1]['speed_up']:.2f}x, label maps identical: {same}", flush=True)
    for row in rows:  # rows of several invocations are shown together: each says how it was measured
        row["command"] = " ".join(["python", "benchmarks/allocator.py", *invocation_args(argv)])
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(), "libc": " ".join(platform.libc_ver()),
            "processor": platform.processor() or platform.machine(), "rounds": args.rounds,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    record_run(args.out, {"meta": meta, "rows": rows}, "allocator.py", argv)
    print(f"wrote {args.out}; rerun: python benchmarks/allocator.py {' '.join(invocation_args(argv))}", file=sys.stderr)


if __name__ == "__main__":
    main()
