"""GPU check: the CUDA path end to end, timed, for a machine with a GPU.

For each network family and backbone (default DeSAM on ``vit_b`` at 1024 px and on ``medsam_lite`` at its
planned size, DAPSAM on ``medsam_lite``), on a hippocampus subset (``--dataset``, default
../shared/datasets/Dataset004_Hippocampus), in a fresh process on ``--device``, with the family's own trainer:

- the embedding cache build (the frozen encoder under AMP; families whose features are cacheable): seconds
  per slice;
- training steps (the trainer's ``train_step``: AMP and nnU-Net's grad scaler on CUDA): median seconds per
  iteration;
- prediction of one validation volume with ``DeSAMPredictor``'s sliding window (no mirroring), in box and
  in grid mode for a prompted family, prompt-free otherwise: seconds per slice, with as many tiles per network call
  as the device's memory cap allows (``inference/tiles.py``) and with one tile at a time (nnU-Net's loop);

each with its peak GPU memory (``torch.cuda.max_memory_allocated``). Weights are random, medsam_lite's too
(SAM's ViT checkpoints cannot be downloaded here); timing does not depend on them. ``--device cpu`` runs the
same steps on the CPU (a smoke check of the script; no GPU figures).

    python benchmarks/gpu_check.py [--runs desam:vit_b desam:medsam_lite dapsam:medsam_lite] [--cases 10]
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_tree import child_result, serve_one  # noqa: E402
from results_file import record_run  # noqa: E402

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


def one_run(family: str, backbone: str, device_name: str, iterations: int) -> dict:
    """Runs inside a fresh process (nnU-Net folders from the environment): cache build, train steps, prediction."""
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from desam_nnu.config import DeSAMConfig
    from desam_nnu.inference.predictor import DeSAMPredictor
    from desam_nnu.trainers import default_trainer, find_trainers

    # random weights for every backbone (timing only): medsam_lite's packaged weights need not be installed
    build_network = DeSAMConfig.build_network
    DeSAMConfig.build_network = lambda self, pretrained=None: build_network(self, pretrained=False)
    device = torch.device(device_name)
    pre = Path(os.environ["nnUNet_preprocessed"]) / os.environ["GPU_CHECK_DATASET"]
    plans = load_json(str(pre / "DeSAMPlans.json"))
    plans["continue_training"] = False  # nnU-Net 2.8.1's trainer pops this from the plans
    trainer = default_trainer(family)
    t = find_trainers()[trainer](plans, "desam_2d", 0, load_json(str(pre / "dataset.json")), device)
    t._check_sam_checkpoint = lambda: None  # random weights: timing only
    t.initialize()
    out = {"family": family, "trainer": trainer, "backbone": backbone, "image_size": t.desam.image_size,
           "batch_size": t.batch_size,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"}

    def build() -> None:
        t.dataloader_train, t.dataloader_val = t.get_dataloaders()

    seconds, peak = _timed(device, build)
    if t.use_cache:
        out["cache_slices"] = len(t.items.case_of_item)
        out["cache_s_per_slice"], out["cache_peak_gpu_mib"] = seconds / out["cache_slices"], peak
    t.network.train()
    for _ in range(2):  # warm-up (kernel selection, allocator)
        t.train_step(next(t.dataloader_train))
    steps = [_timed(device, lambda: t.train_step(next(t.dataloader_train))) for _ in range(iterations)]
    out["train_s_per_iter"] = float(np.median([s for s, _ in steps]))
    out["train_peak_gpu_mib"] = max((m for _, m in steps), default=None) if device.type == "cuda" else None

    _, val_keys = t.do_split()
    data = np.asarray(t.dataset_class(t.preprocessed_dataset_folder, val_keys[:1]).load_case(val_keys[0])[0])
    out["predict_slices"] = int(data.shape[1])
    t.network.eval()
    # each mode with the device's tiles per call (inference/tiles.py), then one tile at a time as nnU-Net's loop
    for mode in ("box", "grid") if t.desam.prompts is not None else ("prompt_free",):
        for per_call, suffix in ((None, ""), (1, "_one_tile")):
            predictor = DeSAMPredictor(use_mirroring=False, device=device, allow_tqdm=False, tiles_per_call=per_call,
                                       prompt_overrides=None if mode == "prompt_free" else {"mode": mode})
            predictor.manual_initialization(predictor.wrap(t.bare_network, t.desam), t.plans_manager,
                                            t.configuration_manager, None, t.dataset_json, trainer,
                                            t.inference_allowed_mirroring_axes)
            predictor.predict_case(torch.from_numpy(data))  # warm-up (kernel selection, allocator), as the steps'
            seconds, peak = _timed(device, lambda: predictor.predict_case(torch.from_numpy(data)))
            out[f"predict_{mode}{suffix}_s_per_slice"] = seconds / out["predict_slices"]
            out[f"predict_{mode}{suffix}_peak_gpu_mib"] = peak
            out[f"predict_{mode}{suffix}_tiles_per_call"] = predictor.tiles_per_call
    return out


def _mib(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}"


def _s(row: dict, key: str, digits: int = 4) -> str:
    return "-" if row.get(key) is None else f"{row[key]:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["desam:vit_b", "desam:medsam_lite", "dapsam:medsam_lite"],
                   help="FAMILY:BACKBONE pairs (default desam:vit_b desam:medsam_lite dapsam:medsam_lite)")
    p.add_argument("--dataset", type=Path, default=DATASET, help="a raw nnU-Net dataset folder (default: hippocampus)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    p.add_argument("--one", nargs=4, metavar=("FAMILY", "BACKBONE", "DEVICE", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if serve_one(args.one, one_run):
        return
    args.dataset = args.dataset.resolve()  # the subset links to it from elsewhere
    if not args.dataset.is_dir():
        sys.exit(f"error: {args.dataset}: not found")
    runs = [r.split(":") for r in args.runs]
    if any(len(r) != 2 for r in runs):
        sys.exit(f"error: --runs {' '.join(args.runs)}: give FAMILY:BACKBONE pairs, e.g. desam:vit_b")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device on this machine; run this where a GPU is (--device cpu: a smoke check)")
    from desam_nnu.paths import link_dataset_subset
    dataset_id = int(args.dataset.name[len("Dataset"):].split("_")[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for family, backbone in runs:
            env = dict(os.environ, nnUNet_n_proc_DA="2", GPU_CHECK_DATASET=args.dataset.name)
            for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                env[k] = os.path.join(tmp, f"{family}_{backbone}", k)
                os.makedirs(env[k])
            link_dataset_subset(str(args.dataset), env["nnUNet_raw"], args.cases)
            size = ["--image-size", str(IMAGE_SIZE[backbone])] if backbone in IMAGE_SIZE else []
            # cwd elsewhere: ``-m`` puts the cwd first on sys.path, and ./desam_nnu is not the installed package
            planned = subprocess.run([sys.executable, "-m", "desam_nnu.cli.plan_and_preprocess", "-d", str(dataset_id),
                                      "-np", "2", "--family", family, "--backbone", backbone, *size], env=env,
                                     cwd=tmp, capture_output=True, text=True)
            if planned.returncode:
                sys.exit(f"error: planning {family} on {backbone} failed:\n{planned.stderr[-3000:]}")
            rows.append(child_result([sys.executable, __file__, "--one", family, backbone, args.device,
                                      str(args.iterations)], env, f"{family} on {backbone} on {args.device}"))
            print(f"{family} {backbone}: {rows[-1]}", flush=True)
    print(f"\nCUDA path check, {args.dataset.name} subset ({args.cases} cases), {args.device}, AMP on CUDA")
    print("| family | backbone | input | device | cache s/slice | train s/iter (batch) | predict s/slice: box / grid "
          "/ prompt-free | peak GPU MiB: cache / train / box / grid / prompt-free |")
    print("|---|---|---|---|---|---|---|---|")
    modes = ("box", "grid", "prompt_free")
    peaks = ["cache_peak_gpu_mib", "train_peak_gpu_mib"] + [f"predict_{m}_peak_gpu_mib" for m in modes]
    for r in rows:
        print(f"| {r['family']} | {r['backbone']} | {r['image_size']} | {r['device']} | {_s(r, 'cache_s_per_slice')} | "
              f"{_s(r, 'train_s_per_iter', 3)} ({r['batch_size']}) | "
              f"{' / '.join(_s(r, f'predict_{m}_s_per_slice') for m in modes)} | "
              f"{' / '.join(_mib(r.get(k)) for k in peaks)} |")
    print("\n| family | backbone | mode | tiles per call | predict s/slice | one tile at a time | speed-up |"
          "\n|---|---|---|---|---|---|---|")
    for r in rows:
        for m in modes:
            if f"predict_{m}_s_per_slice" in r:
                batched, single = r[f"predict_{m}_s_per_slice"], r[f"predict_{m}_one_tile_s_per_slice"]
                print(f"| {r['family']} | {r['backbone']} | {m} | {r[f'predict_{m}_tiles_per_call']} | "
                      f"{batched:.4f} | {single:.4f} | {single / batched:.2f}x |")
    for r in rows:
        r.update(cases=args.cases, iterations=args.iterations)
    if args.device != "cuda":
        print("(--device cpu: a smoke check; nothing written)")
        return
    import torch
    record_run(args.out, {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.version.cuda, "rows": rows}, "gpu_check.py")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
