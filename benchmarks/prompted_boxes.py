"""Benchmark: prompted accuracy with a simulated user's boxes, hippocampus fold 0; DB-SAM's cost on SAM's ViT-B.

What is measured: the race's fold-0 validation volumes (``dice_budget.py``'s kept folder trees), each predicted by
``desam_predict --prompts BOXES.json``, where BOXES.json is what ``desam_evaluate --prompts-from-labels`` writes
from their reference labels: a box per class on every slice that holds it, each side moved outward by its own
random 0..5 mm (``--jitter-mm``, seed 0), as MedSAM and DB-SAM measure prompted accuracy. Dice per class and
their mean by ``desam_evaluate`` (no postprocessing: the boxes say where); seconds per volume: ``desam_predict``'s
wall time over the volumes (one process, its start-up included, no TTA, 2 CPU threads).

Models (``--models``, in this order), all on medsam_lite at the plans' 128 px:

- ``desam``: DeSAM trained at the race's budget (the tree ``desam_{M}min_200cases``), each box decoded on its own;
- ``dbsam``: DB-SAM trained the same way (``dbsam_{M}min_200cases``: ``dice_budget.py --runs dbsam``);
- ``litemedsam``: LiteMedSAM as it ships, no training: the untrained DB-SAM on medsam_lite, which is LiteMedSAM
  box for box (its adapter's outputs and class embeddings start at zero: ``tests/test_dbsam_pipeline.py``), in a
  model folder made here from the dbsam tree's plans: the same preprocessing, tiles and boxes.

The cost figure: one 1024 px slice through DB-SAM on SAM's ViT-B with random weights (``--vit-slices``), on the CPU.

    python benchmarks/prompted_boxes.py [--minutes 30] [--models desam dbsam litemedsam] [--volumes N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(__file__))
from dice_budget import BIN, _dice, _run  # noqa: E402
from results_file import invocation_args, record_run  # noqa: E402
from train import DATASET  # noqa: E402

from desam_nnu.trainers import default_trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = ("desam", "dbsam", "litemedsam")


def model_folder(tree: Path, family: str) -> Path:
    """The race tree's trained model of ``family`` (its default trainer's folder)."""
    return tree / "nnUNet_results" / DATASET.name / f"{default_trainer(family)}__DeSAMPlans__desam_2d"


def litemedsam_folder(dbsam_model: Path, out: Path) -> Path:
    """A model folder whose fold 0 is the untrained DB-SAM on medsam_lite (LiteMedSAM's packaged weights, the
    adapter and class embeddings at their zero start), with the DB-SAM model's plans and dataset.json."""
    import torch

    from desam_nnu.config import CONFIGURATION
    from desam_nnu.planners.plans import DeSAMPlansManager

    if out.exists():
        shutil.rmtree(out)
    (out / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(dbsam_model / name, out / name)
    cfg = DeSAMPlansManager(json.loads((out / "plans.json").read_text())).get_configuration(CONFIGURATION).desam
    net = cfg.build_network(pretrained=None)  # medsam_lite: LiteMedSAM's packaged weights
    torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": CONFIGURATION},
                "trainer_name": default_trainer("dbsam"), "inference_allowed_mirroring_axes": (0, 1)},
               out / "fold_0" / "checkpoint_final.pth")
    return out


def validation_inputs(tree: Path, work: Path, volumes: Optional[int]) -> List[str]:
    """Fold 0's validation cases of the race's split (the first ``volumes``), linked into ``work/images`` and
    ``work/labels`` with the dataset.json beside them (``desam_evaluate`` reads it from ``-ref``'s parent)."""
    split = json.loads((tree / "nnUNet_preprocessed" / DATASET.name / "splits_final.json").read_text())[0]
    cases = sorted(split["val"])[:volumes]
    for sub in ("images", "labels"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    for case in cases:
        (work / "images" / f"{case}_0000.nii.gz").symlink_to(DATASET / "imagesTr" / f"{case}_0000.nii.gz")
        (work / "labels" / f"{case}.nii.gz").symlink_to(DATASET / "labelsTr" / f"{case}.nii.gz")
    shutil.copy(DATASET / "dataset.json", work / "dataset.json")
    return cases


def predict_with_boxes(model: Path, work: Path, boxes: Path, name: str, env: dict, volumes: int) -> dict:
    """``desam_predict --prompts`` on the linked images, scored: Dice per class, mean and seconds per volume."""
    pred = work / f"pred_{name}"
    shutil.rmtree(pred, ignore_errors=True)
    start = time.perf_counter()
    _run([BIN / "desam_predict", "-i", work / "images", "-o", pred, "-m", model, "-f", "0", "--prompts", boxes,
          "--disable-tta", "-device", "cpu"], env, work / f"predict_{name}.log")
    seconds = time.perf_counter() - start
    _run([BIN / "desam_evaluate", "-ref", work / "labels", "-pred", pred], env, work / f"evaluate_{name}.log")
    return {"dice": _dice(pred / "summary.json"), "s_per_volume": seconds / volumes, "model": str(model)}


def vit_cost(slices: int) -> dict:
    """Seconds per 1024 px slice through DB-SAM on ViT-B (random weights), one slice per forward."""
    import torch

    from desam_nnu.model import build_network

    torch.manual_seed(0)
    net = build_network("dbsam", "vit_b", image_size=1024).eval()
    image, box = torch.rand(1, 3, 1024, 1024) * 255, torch.tensor([[300.0, 300.0, 700.0, 700.0]])
    times = []
    with torch.no_grad():
        for _ in range(slices):
            start = time.perf_counter()
            net(image, box)
            times.append(time.perf_counter() - start)
    return {"s_per_slice": sum(times) / len(times), "slices": slices, "threads": torch.get_num_threads(),
            "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="the race budget whose trained models are measured")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--volumes", type=int, default=None, help="the first N validation volumes (default: all)")
    p.add_argument("--cases", type=int, default=200, help="the race's case count (its trees' names; default 200)")
    p.add_argument("--jitter-mm", type=float, default=5.0, help="box perturbation, each side outward 0..MM mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vit-slices", type=int, default=1, help="slices timed through DB-SAM-vit_b (0: skip)")
    p.add_argument("--race-work", type=Path, default=HERE / "work" / "dice_budget",
                   help="dice_budget.py's kept folder trees (default benchmarks/work/dice_budget)")
    p.add_argument("--work", type=Path, default=HERE / "work" / "prompted_boxes")
    p.add_argument("--out", type=Path, default=HERE / "results" / "prompted_boxes.json")
    args = p.parse_args(argv)
    tag = f"{args.minutes:g}min_{args.cases}cases"
    trees = {m: args.race_work / f"{'dbsam' if m == 'litemedsam' else m}_{tag}" for m in args.models}
    missing = [f"{t}: no race tree (python benchmarks/dice_budget.py --runs {t.name.split('_')[0]} --minutes "
               f"{args.minutes:g})" for t in trees.values() if not t.is_dir()]
    if missing:
        sys.exit("error: " + "\nerror: ".join(sorted(set(missing))))
    args.work.mkdir(parents=True, exist_ok=True)
    cases = validation_inputs(next(iter(trees.values())), args.work, args.volumes)
    env = dict(os.environ, nnUNet_compile="f")
    boxes = args.work / "boxes.json"
    _run([BIN / "desam_evaluate", "-ref", args.work / "labels", "--prompts-from-labels", boxes, "--jitter-mm",
          f"{args.jitter_mm:g}", "--seed", str(args.seed)], env, args.work / "boxes.log")
    rows: Dict[str, dict] = {}
    results = {"note": "hippocampus fold 0, a simulated user's box per class and slice", "cases": cases,
               "jitter_mm": args.jitter_mm, "seed": args.seed, "minutes": args.minutes, "rows": rows,
               "cpus": os.cpu_count(), "machine": platform.machine(),
               "command": " ".join(["python", "benchmarks/prompted_boxes.py", *invocation_args(argv)])}
    for m in args.models:
        family = "dbsam" if m == "litemedsam" else m
        model = model_folder(trees[m], family)
        if m == "litemedsam":
            model = litemedsam_folder(model, args.work / "litemedsam_model")
        print(f"{m}: desam_predict --prompts on {len(cases)} volumes", flush=True)
        rows[m] = predict_with_boxes(model, args.work, boxes, m, env, len(cases))
        print(f"{m}: {json.dumps(rows[m]['dice'])}, {rows[m]['s_per_volume']:.1f} s / volume", flush=True)
        record_run(args.out, results, "prompted_boxes.py", argv)
    if args.vit_slices:
        print(f"DB-SAM vit_b: {args.vit_slices} slice(s) at 1024 px", flush=True)
        results["vit_b"] = vit_cost(args.vit_slices)
        print(f"DB-SAM vit_b: {results['vit_b']['s_per_slice']:.1f} s / slice", flush=True)
    record_run(args.out, results, "prompted_boxes.py", argv)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
