"""Benchmark: DeSAM training with the embedding cache against online encoding, in one run.

For each backbone (default tiny and vit_b) at the planned input size on a hippocampus subset
(../shared/datasets/Dataset004_Hippocampus): seconds per training iteration with cached features
(no encoder forward) and with online encoding, the cache's bytes per slice for float16 and int8
against the official float32 layout, and the peak RSS of each run (each in its own process).
Weights are random (timing does not depend on them). Target: cached <= 1/5 of online.

    python benchmarks/train.py [--backbones tiny vit_b] [--cases 20] [--iterations 20]

Rows are merged into the JSON by backbone (each row records its cases, iterations and command), so
backbones can be measured in separate runs.
"""
import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_tree import child_result, serve_one  # noqa: E402
from results_file import invocation_args, record_run  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
TARGET = 0.2


def _link_subset(raw: Path, cases: int) -> None:
    from desam_nnu.paths import link_dataset_subset
    link_dataset_subset(str(DATASET), str(raw), cases)


def one_run(backbone: str, mode: str, dtype: str, iterations: int) -> dict:
    """Runs inside a fresh process (nnU-Net folders from the environment): time train steps."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from desam_nnu.trainers import DeSAMTrainer

    torch.set_num_threads(os.cpu_count() or 1)
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET.name
    plans = load_json(str(pre / "DeSAMPlans.json"))
    plans["continue_training"] = False
    t = DeSAMTrainer(plans, "desam_2d", 0, load_json(str(pre / "dataset.json")), torch.device("cpu"))
    t._check_sam_checkpoint = lambda: None  # random weights: timing only
    t.use_cache, t.cache_dtype = mode == "cache", dtype
    t.initialize()
    start = time.perf_counter()
    t.dataloader_train, _ = t.get_dataloaders()
    build_s = time.perf_counter() - start
    t.network.train()
    for _ in range(2):  # warm-up
        t.train_step(next(t.dataloader_train))
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        t.train_step(next(t.dataloader_train))
        times.append(time.perf_counter() - start)
    times.sort()
    out = {"backbone": backbone, "mode": mode, "dtype": dtype, "batch_size": t.batch_size,
           "image_size": t.desam.image_size, "sec_per_iter": times[len(times) // 2],
           "prepare_s": build_s, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if mode == "cache":
        items = len(t.items.case_of_item)
        case = t.cache.read(t.items.cases[0])
        out["cache_bytes_per_slice"] = case.bytes_per_item(extras=False)
        out["cache_bytes_on_disk"] = t.cache.bytes_on_disk()
        out["cache_items"] = items
        shapes = t.desam.cache.feature_shapes
        out["official_float32_bytes_per_slice"] = int(sum(c * h * w for c, h, w in shapes) * 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["tiny", "vit_b"])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    p.add_argument("--one", nargs=4, metavar=("BACKBONE", "MODE", "DTYPE", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if serve_one(args.one, one_run):
        return
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for backbone in args.backbones:
            env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="1")
            for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                env[k] = os.path.join(tmp, backbone, k)
                os.makedirs(env[k])
            _link_subset(Path(env["nnUNet_raw"]), args.cases)
            subprocess.run([str(Path(sys.executable).parent / "desam_plan_and_preprocess"), "-d", "4", "-np", "2",
                            "--backbone", backbone], env=env, check=True, capture_output=True)
            for mode, dtype in (("cache", "float16"), ("cache", "int8"), ("online", "float16")):
                rows.append(child_result([sys.executable, __file__, "--one", backbone, mode, dtype,
                                          str(args.iterations)], env, f"{backbone} {mode} {dtype}"))
                r = rows[-1]
                print(f"  {backbone:6s} {mode:6s} {dtype:7s} {r['sec_per_iter']:.3f} s/iter, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    print(f"\ntraining step, hippocampus subset ({args.cases} cases), CPU {os.cpu_count()} threads, median of "
          f"{args.iterations} iterations")
    print("| backbone | input | batch | cached s/iter | online s/iter | cached / online | target | fp16 B/slice |"
          " int8 B/slice | official fp32 B/slice | peak RSS cached / online (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for backbone in args.backbones:
        by = {(r["mode"], r["dtype"]): r for r in rows if r["backbone"] == backbone}
        fp16, int8, online = by[("cache", "float16")], by[("cache", "int8")], by[("online", "float16")]
        ratio = fp16["sec_per_iter"] / online["sec_per_iter"]
        summary.append({"backbone": backbone, "ratio": ratio, "met": ratio <= TARGET})
        print(f"| {backbone} | {fp16['image_size']} | {fp16['batch_size']} | {fp16['sec_per_iter']:.3f} | "
              f"{online['sec_per_iter']:.3f} | {ratio:.3f} | <= {TARGET} {'met' if ratio <= TARGET else 'MISSED'} | "
              f"{fp16['cache_bytes_per_slice']} | {int8['cache_bytes_per_slice']} | "
              f"{fp16['official_float32_bytes_per_slice']} | {fp16['peak_rss_mib']:.0f} / {online['peak_rss_mib']:.0f} |")
    command = " ".join(["python", "benchmarks/train.py", *invocation_args()])
    for r in rows:  # each row says how it was measured: the results view merges rows of several runs
        r.update(cases=args.cases, iterations=args.iterations, command=command)
    record_run(args.out, {"machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows, "summary": summary},
               "train.py")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
