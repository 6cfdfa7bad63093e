"""Benchmark: a 5-fold vit_b model folder and its ensemble prediction, before and after slim checkpoints and
encode-once ensembles (issue #21).

What is measured, on this CPU, with random weights (SAM's ViT weights cannot be downloaded here):

- model-folder bytes of 5 folds of ``vit_b`` (hippocampus plans, input 256), each fold with nnU-Net's two
  lasting checkpoints (``checkpoint_best.pth``, ``checkpoint_final.pth``; ``checkpoint_latest.pth`` is removed
  when training ends). Before: full weights in every checkpoint, as desam_train wrote them. After: as desam_train
  writes them now (``desam_nnu.frozen_encoder``: the frozen encoder once in the folder, each checkpoint what
  trained plus a record).
- ``desam_predict`` (box mode, no mirroring, one preprocessing / export worker) on ``--cases`` hippocampus
  volumes: wall seconds and the peak RSS of the process tree, for one fold and for the 5-fold ensemble. Before:
  the full-weight folder with each fold's encoder one ulp apart in one value, so that the predictor cannot share
  it and runs nnU-Net's per-fold loop (each fold's weights loaded in turn, every tile encoded once per fold), which
  is what desam_predict did for every ensemble before encode-once. After: the slim folder (one encoder pass,
  five decoder passes). Goal: the ensemble at most 1.5x one fold.

    python benchmarks/ensemble.py [--cases 2] [--out benchmarks/results/ensemble.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_setup import BIN, MIB, _check_run, _env, _input_folder, _measured  # noqa: E402
from results_file import record_run  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
PLAN_CASES = 10
FOLDS = 5
CHECKPOINTS = ("checkpoint_best.pth", "checkpoint_final.pth")


def write_folds(env: dict, name: str, slim: bool) -> Path:
    """A 5-fold random-weight model folder: the same frozen encoder (seed 0) in every fold, each fold's
    decoder its own (seed 1 + fold); slim as desam_train writes now, or full weights (one encoder value of
    fold k moved by k ulps)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from desam_nnu.frozen_encoder import slim_on_save, write_frozen_encoder
    from desam_nnu.planners.plans import DeSAMPlansManager

    pre = Path(env["nnUNet_preprocessed"], name)
    cfg = DeSAMPlansManager(load_json(str(pre / "DeSAMPlans.json"))).get_configuration("desam_2d").desam
    folder = Path(env["nnUNet_results"], name, f"DeSAMTrainer__DeSAMPlans__desam_2d_{'slim' if slim else 'full'}")
    folder.mkdir(parents=True)
    shutil.copy(pre / "DeSAMPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.manual_seed(0)
    network = cfg.build_network()
    encoder = {k: v.clone() for k, v in network.state_dict().items() if k.startswith("image_encoder.")}
    frozen = write_frozen_encoder(network, str(folder), {"backbone": cfg.backbone, "weights": "random"}) if slim \
        else None
    for fold in range(FOLDS):
        torch.manual_seed(1 + fold)
        network = cfg.build_network()
        network.load_state_dict(encoder, strict=False)
        if not slim:
            with torch.no_grad():
                w = network.image_encoder.neck[0].weight.view(-1)
                for _ in range(fold):
                    w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
        if frozen is not None:
            with slim_on_save(network, frozen, str(folder)):
                weights = network.state_dict()
        else:
            weights = network.state_dict()
        (folder / f"fold_{fold}").mkdir()
        for checkpoint in CHECKPOINTS:
            torch.save({"network_weights": weights, "trainer_name": "DeSAMTrainer",
                        "init_args": {"configuration": "desam_2d"}, "inference_allowed_mirroring_axes": (0, 1)},
                       folder / f"fold_{fold}" / checkpoint)
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2, help="hippocampus volumes predicted (default 2)")
    p.add_argument("--backbone", default="vit_b")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ensemble.json")
    args = p.parse_args(argv)
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    from desam_nnu.paths import link_dataset_subset

    tmp = Path(tempfile.mkdtemp(prefix="ensemble_"))
    try:
        raw = tmp / "raw"
        raw.mkdir()
        name = os.path.basename(link_dataset_subset(str(DATASET), str(raw), PLAN_CASES))
        env = _env(tmp, raw)
        _check_run([str(BIN / "desam_plan_and_preprocess"), "-d", "4", "-np", "2", "--backbone", args.backbone],
                   env, tmp / "plan.log")
        folders = {kind: write_folds(env, name, kind == "after") for kind in ("before", "after")}
        images = sorted(DATASET.glob("imagesTr/*_0000.nii.gz"))[PLAN_CASES:PLAN_CASES + args.cases]
        inp = _input_folder(tmp / "in", images)
        rows: Dict[str, dict] = {}
        for kind, folder in folders.items():
            rows[kind] = {"folder_bytes": folder_bytes(folder), "predict": {}}
            print(f"{kind}: model folder {rows[kind]['folder_bytes'] / MIB:.0f} MiB", flush=True)
            for folds in ([0], list(range(FOLDS))):
                cmd = [str(BIN / "desam_predict"), "-i", str(inp), "-o", str(tmp / "out"), "-m", str(folder),
                       "-f", *map(str, folds), "-device", "cpu", "--disable-tta", "--prompt-mode", "box",
                       "-npp", "1", "-nps", "1"]
                m = _measured(cmd, env, tmp / "out", tmp / f"{kind}_{len(folds)}.log", args.cases)
                rows[kind]["predict"][str(len(folds))] = m
                print(f"{kind}: {len(folds)} fold(s): {m['seconds']:.1f} s, peak RSS of the process tree "
                      f"{m['peak_tree_rss'] / MIB:.0f} MiB", flush=True)
        result = {"backbone": args.backbone, "cases": args.cases, "folds": FOLDS, "checkpoints": list(CHECKPOINTS),
                  "rows": rows, "cpus": os.cpu_count(), "machine": platform.machine()}
        record_run(args.out, result, "ensemble.py", argv)
        print(f"written {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
