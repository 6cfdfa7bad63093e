"""Benchmark: DeSAM against nnU-Net's 2D U-Net under simulated scanner shifts, the models of the equal-budget race.

What is measured: ``desam_robustness`` on hippocampus fold 0's validation volumes (the first ``--cases`` of
them in sorted order) with the two models that ``dice_budget.py`` trained for the same ``--minutes`` of
wall-clock training (its kept folder trees, ``--race-work``): the DeSAM model predicted with its chosen
configuration, nnU-Net's with its chosen postprocessing. Every shift at ``--levels``; both models without
mirroring (``--disable-tta``, as DeSAM's own validation on a CPU: mirroring would quadruple its encoder
work), on the same shifted volumes. The study folder (shifted images, predictions) is kept in
``--race-work``/robustness_<minutes>min_<race cases>cases, so a killed run resumes.

    python benchmarks/robustness.py --race-work benchmarks/work/dice_budget --minutes 30 --cases 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, os.path.dirname(__file__))
from results_file import record_run  # noqa: E402
from train import DATASET  # noqa: E402

HERE = Path(__file__).resolve().parent


def race_models(work: Path, minutes: float, cases: int) -> List[Path]:
    """The DeSAM and nnU-Net model folders of the race's ``minutes`` budget on ``cases`` cases."""
    tag = f"{minutes:g}min_{cases}cases"
    desam = work / f"desam_{tag}" / "nnUNet_results" / DATASET.name / "DeSAMTrainer__DeSAMPlans__desam_2d"
    nnunet = sorted((work / f"nnunet_2d_{tag}" / "nnUNet_results" / DATASET.name).glob("*__nnUNetPlans__2d"))
    if not desam.is_dir() or len(nnunet) != 1:
        sys.exit(f"error: {work}: no DeSAM and nnU-Net models of the {minutes:g}-minute race on {cases} cases; run "
                 f"python benchmarks/dice_budget.py --minutes {minutes:g} --work {work} first")
    return [desam, nnunet[0]]


def validation_images(work: Path, tag: str, folder: Path) -> List[str]:
    """Links to fold 0's validation images (the split both tools trained with) in ``folder``; the cases."""
    splits = [json.loads((work / f"{tool}_{tag}" / "nnUNet_preprocessed" / DATASET.name /
                          "splits_final.json").read_text())[0]["val"] for tool in ("desam", "nnunet_2d")]
    if splits[0] != splits[1]:
        sys.exit("error: the two models were trained on different fold-0 splits")
    folder.mkdir(parents=True, exist_ok=True)
    for case in splits[0]:
        link = folder / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(DATASET / "imagesTr" / f"{case}_0000.nii.gz")
    return sorted(splits[0])


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--race-work", type=Path, default=HERE / "work" / "dice_budget",
                   help="dice_budget.py's --work folder (default benchmarks/work/dice_budget, its default)")
    p.add_argument("--minutes", type=float, default=30.0, help="the race budget whose models to compare (30)")
    p.add_argument("--race-cases", type=int, default=200, help="the race's case count (200: all)")
    p.add_argument("--cases", type=int, default=10, help="validation volumes, the first N in sorted order (10)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 3, 5], help="severities (default 1 3 5)")
    p.add_argument("--shifts", nargs="+", default=None, help="default all")
    p.add_argument("--out", type=Path, default=HERE / "results" / "robustness.json")
    args = p.parse_args(argv)
    from desam_nnu.inference.robustness import run_robustness
    from desam_nnu.inference.robustness_report import format_table

    models = race_models(args.race_work, args.minutes, args.race_cases)
    tag = f"{args.minutes:g}min_{args.race_cases}cases"
    study = args.race_work / f"robustness_{tag}"
    validation_images(args.race_work, tag, study / "validation_images")
    # a resumed study's time is only this invocation's: say how many model x set predictions were done before
    done_before = len(list((study / "predictions").glob("*/*/dice.json")))
    start = time.perf_counter()
    result = run_robustness(str(study / "validation_images"), str(DATASET / "labelsTr"), str(study),
                            [str(m) for m in models], args.shifts, args.levels, args.cases, seed=0, device="cpu",
                            disable_tta=True)
    seconds = time.perf_counter() - start
    print(format_table(result))
    record = {k: result[k] for k in ("cases", "levels", "seed", "use_mirroring", "models", "shifts", "summary")}
    record.update(minutes=args.minutes, race_cases=args.race_cases, seconds=seconds, predictions_done_before=done_before,
                  cpus=os.cpu_count(), machine=platform.machine(), png=args.out.with_suffix(".png").name)
    from desam_nnu.atomic import atomic_copy
    record_run(args.out, record, "robustness.py", argv)
    atomic_copy(str(study / "robustness.png"), str(args.out.with_suffix(".png")))
    print(f"written {args.out} and {args.out.with_suffix('.png')} ({seconds / 60:.0f} min)")


if __name__ == "__main__":
    main()
