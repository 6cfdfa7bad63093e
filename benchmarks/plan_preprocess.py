"""Benchmark: desam_plan_and_preprocess against nnUNetv2_plan_and_preprocess -c 2d, in one run.

Both get the same raw dataset (default: all 200 cases of ../shared/datasets/Dataset004_Hippocampus),
the same worker count, a fresh nnUNet_preprocessed folder each, and recompute the fingerprint.
Prints a table and writes benchmarks/results/plan_preprocess.json. Target: ours <= 1.2x nnU-Net
in wall time and in peak memory.

    python benchmarks/plan_preprocess.py [--dataset DIR] [-np 2] [--repeats 1]
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from proc_tree import measure  # noqa: E402
from results_file import record_run  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
TARGET = 1.2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("-np", type=int, default=2, dest="num_processes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "plan_preprocess.json")
    args = p.parse_args()
    if not args.dataset.is_dir():
        sys.exit(f"error: {args.dataset}: dataset folder not found")
    bindir = Path(sys.executable).parent
    name = args.dataset.name
    dataset_id = str(int(name[len("Dataset"):len("Dataset") + 3]))
    runs = {"desam-nnu": [], "nnU-Net": []}
    with tempfile.TemporaryDirectory(prefix="bench_pp_") as tmp:
        raw = Path(tmp, "raw")
        raw.mkdir()
        os.symlink(args.dataset.resolve(), raw / name)
        commands = {
            "desam-nnu": [str(bindir / "desam_plan_and_preprocess"), "-d", dataset_id, "-np",
                          str(args.num_processes), "--clean"],
            "nnU-Net": [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d", "-np",
                        str(args.num_processes), "--clean"],
        }
        for r in range(args.repeats):
            for who, cmd in commands.items():
                pre = Path(tmp, f"pre_{who}")
                shutil.rmtree(pre, ignore_errors=True)
                pre.mkdir()
                env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre),
                           nnUNet_results=str(Path(tmp, "results")))
                result = measure(cmd, env=env, log=str(Path(tmp, f"{who}_{r}.log")))
                if result["returncode"] != 0:
                    sys.exit(f"error: {who} failed:\n" + Path(tmp, f"{who}_{r}.log").read_text()[-3000:])
                runs[who].append(result)
                print(f"  run {r + 1}: {who:9s} {result['seconds']:.1f} s, "
                      f"peak tree RSS {result['peak_tree_rss'] / 2 ** 20:.0f} MiB", flush=True)

    def best(who, key):
        return min(x[key] for x in runs[who])

    rows = []
    for key, label, unit, scale in (("seconds", "wall time", "s", 1), ("peak_tree_rss", "peak RSS (process tree)",
                                                                          "MiB", 2 ** 20)):
        ours, ref = best("desam-nnu", key) / scale, best("nnU-Net", key) / scale
        rows.append({"measure": label, "unit": unit, "ours": round(ours, 2), "nnunet": round(ref, 2),
                     "ratio": round(ours / ref, 3), "target": f"<= {TARGET}x", "met": ours / ref <= TARGET})
    result = {"dataset": name, "cases": len(os.listdir(args.dataset / "labelsTr")),
              "num_processes": args.num_processes, "repeats": args.repeats, "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "rows": rows, "each_repeat": runs}
    print(f"\nplan + preprocess, {name} ({result['cases']} cases), -np {args.num_processes}, best of "
          f"{args.repeats}")
    print("| measure | ours | nnU-Net 2d | ratio | target |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['measure']} ({row['unit']}) | {row['ours']} | {row['nnunet']} | {row['ratio']} | "
              f"{row['target']} {'met' if row['met'] else 'MISSED'} |")
    record_run(args.out, result, "plan_preprocess.py")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
