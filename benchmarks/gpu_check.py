"""GPU check: the CUDA path end to end, timed, for a machine with a GPU.

For each backbone (default ``vit_b`` at 1024 px and ``medsam_lite`` at its planned size), on a
hippocampus subset (../shared/datasets/Dataset004_Hippocampus), in a fresh process on ``--device``:

- the embedding cache build (the frozen encoder under AMP): seconds per slice;
- training steps (``DeSAMTrainer.train_step``: AMP and nnU-Net's grad scaler on CUDA): median
  seconds per iteration;
- prediction of one validation volume with ``DeSAMPredictor``'s sliding window (no mirroring), in
  box and in grid mode: seconds per slice;

each with its peak GPU memory (``torch.cuda.max_memory_allocated``). Weights are random (SAM's ViT
checkpoints cannot be downloaded here); timing does not depend on them. ``--device cpu`` runs the
same steps on the CPU (a smoke check of the script; no GPU figures).

    python benchmarks/gpu_check.py [--backbones vit_b medsam_lite] [--cases 10] [--iterations 10]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
IMAGE_SIZE = {"vit_b": 1024}  # SAM's native input; other backbones at the planner's choice


def _timed(device, fn: Callable[[], object]) -> tuple:
    """(seconds, peak GPU MiB or None) of ``fn()``, the device synchronised before and after."""
    import torch
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None)


def one_run(backbone: str, device_name: str, iterations: int) -> dict:
    """Runs inside a fresh process (nnU-Net folders from the environment): cache build, train steps, prediction."""
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from desam_nnu.inference.predictor import DeSAMPredictor
    from desam_nnu.inference.prompted import PromptedDeSAM, PromptSettings
    from desam_nnu.trainers import DeSAMTrainer

    device = torch.device(device_name)
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET.name
    plans = load_json(str(pre / "DeSAMPlans.json"))
    plans["continue_training"] = False  # nnU-Net 2.8.1's trainer pops this from the plans
    t = DeSAMTrainer(plans, "desam_2d", 0, load_json(str(pre / "dataset.json")), device)
    t._check_sam_checkpoint = lambda: None  # random weights: timing only
    t.initialize()
    out = {"backbone": backbone, "image_size": t.desam.image_size, "batch_size": t.batch_size,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"}

    def build() -> None:
        t.dataloader_train, t.dataloader_val = t.get_dataloaders()

    seconds, out["cache_peak_gpu_mib"] = _timed(device, build)
    out["cache_slices"] = len(t.items.case_of_item)
    out["cache_s_per_slice"] = seconds / out["cache_slices"]
    t.network.train()
    for _ in range(2):  # warm-up (kernel selection, allocator)
        t.train_step(next(t.dataloader_train))
    steps = [_timed(device, lambda: t.train_step(next(t.dataloader_train))) for _ in range(iterations)]
    out["train_s_per_iter"] = float(np.median([s for s, _ in steps]))
    out["train_peak_gpu_mib"] = max((m for _, m in steps), default=None) if device.type == "cuda" else None

    _, val_keys = t.do_split()
    data = np.asarray(t.dataset_class(t.preprocessed_dataset_folder, val_keys[:1]).load_case(val_keys[0])[0])
    out["predict_slices"] = int(data.shape[1])
    for mode in ("box", "grid"):
        network = PromptedDeSAM(t.bare_network, t.desam, PromptSettings.from_plans(t.desam, mode=mode))
        predictor = DeSAMPredictor(use_mirroring=False, device=device, allow_tqdm=False)
        predictor.manual_initialization(network, t.plans_manager, t.configuration_manager, None, t.dataset_json,
                                        "DeSAMTrainer", t.inference_allowed_mirroring_axes)
        seconds, peak = _timed(device, lambda: predictor.predict_sliding_window_return_logits(torch.from_numpy(data)))
        out[f"predict_{mode}_s_per_slice"] = seconds / out["predict_slices"]
        out[f"predict_{mode}_peak_gpu_mib"] = peak
    return out


def _mib(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["vit_b", "medsam_lite"])
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    p.add_argument("--one", nargs=3, metavar=("BACKBONE", "DEVICE", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.one[0], args.one[1], int(args.one[2]))))
        return
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device on this machine; run this where a GPU is (or --device cpu for a smoke check)")
    from desam_nnu.paths import link_dataset_subset
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for backbone in args.backbones:
            env = dict(os.environ, nnUNet_n_proc_DA="2")
            for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                env[k] = os.path.join(tmp, backbone, k)
                os.makedirs(env[k])
            link_dataset_subset(str(DATASET), env["nnUNet_raw"], args.cases)
            size = ["--image-size", str(IMAGE_SIZE[backbone])] if backbone in IMAGE_SIZE else []
            subprocess.run([str(Path(sys.executable).parent / "desam_plan_and_preprocess"), "-d", "4", "-np", "2",
                            "--backbone", backbone, *size], env=env, check=True, capture_output=True)
            done = subprocess.run([sys.executable, __file__, "--one", backbone, args.device, str(args.iterations)],
                                  env=env, capture_output=True, text=True)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"error: {backbone} on {args.device} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line[0][len("RESULT "):]))
    print(f"\nCUDA path check, hippocampus subset ({args.cases} cases), {args.device}, AMP on CUDA")
    print("| backbone | input | device | cache s/slice | train s/iter (batch) | predict box s/slice | "
          "predict grid s/slice | peak GPU MiB cache / train / box / grid |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['image_size']} | {r['device']} | {r['cache_s_per_slice']:.4f} | "
              f"{r['train_s_per_iter']:.3f} ({r['batch_size']}) | {r['predict_box_s_per_slice']:.4f} | "
              f"{r['predict_grid_s_per_slice']:.4f} | {_mib(r['cache_peak_gpu_mib'])} / "
              f"{_mib(r['train_peak_gpu_mib'])} / {_mib(r['predict_box_peak_gpu_mib'])} / "
              f"{_mib(r['predict_grid_peak_gpu_mib'])} |")
    command = "python " + " ".join(sys.argv)
    for r in rows:
        r.update(cases=args.cases, iterations=args.iterations, command=command)
    if args.device != "cuda":
        print("(--device cpu: a smoke check; nothing written)")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
