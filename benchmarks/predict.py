"""Benchmark: desam_predict (grid against box mode, against nnU-Net's 2D predictor, CT memory), in one run.

A. DeSAM's automatic grid mode (9 x 9 = 81 prompts) against box mode (one whole-tile box) for each
   backbone (default tiny and vit_b) at the planned input size, on N hippocampus volumes
   (../shared/datasets/Dataset004_Hippocampus). Seconds per volume without start-up: a child process
   (``--one``) initialises DeSAMPredictor once and predicts each volume in-process (-npp 0 -nps 0) in
   both modes, alternating (grid, box; then box, grid), so that both see the same load of the shared
   CPU; the time is split into encoder / PRIM / PDMM / the rest of nnU-Net's sliding window /
   preprocessing / export, tiles are counted (``PromptedDeSAM.tile_calls``), and the peak RSS per
   mode is read from VmHWM (reset between runs). Also each mode as a whole ``desam_predict`` command
   (``proc_tree.measure``: wall time, peak RSS of the process tree). Target (#22): grid <= 2x box per volume.
   Weights are random (no SAM checkpoint can be downloaded). With random weights PRIM's predicted
   IoU stays below the plans' 0.5 threshold, which would skip PDMM and flatter grid mode, so grid
   runs with ``--iou-thresh -1000``: the best prompt of every tile goes through PDMM (the worst case).
B. The same whole commands against ``nnUNetv2_predict -c 2d`` (random weights, nnU-Net's own plans
   for the same subset), all with TTA off and one preprocessing / export worker: wall time for N and
   for 1 volume (run back to back), seconds per volume (t_N / N), the marginal (t_N - t_1) / (N - 1)
   without start-up, and ours / nnU-Net.
C. (--ct, about 3 minutes more) Peak RSS of desam_predict on one synthetic 512 x 512 x 300 CT
   (tiny, box mode, no TTA, tile step 1.0), planned on three 512 x 512 x 40 cases. Target <= 6 GB.

Model folders are written as desam_train / nnUNetv2_train leave them (plans.json, dataset.json,
fold_0/checkpoint_final.pth); every nnU-Net folder is a temporary directory. ``--repeats R`` runs
every measurement R times and keeps the best (other processes only ever add time).

    python benchmarks/predict.py [--backbones tiny vit_b] [--cases 3] [--repeats 1] [--ct] [--profile] [--out FILE]
    python benchmarks/predict.py --cases 0 --ct        # part C only

Each invocation's results are merged into the JSON's ``runs`` under a key naming what it measured.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import predict_setup  # noqa: E402
from arithmetic import nnunet_arithmetic  # noqa: E402
from proc_tree import child_result, serve_one  # noqa: E402
from results_file import record_run  # noqa: E402
from predict_ct import synthetic_ct  # noqa: E402
from predict_inprocess import DATASET_ID, GRID_IOU_THRESH, MODES, one_run  # noqa: E402
from predict_setup import (BIN, MIB, _check_run, _env, _input_folder, _measured, _predict_cmd,  # noqa: E402
                           write_desam_model, write_nnunet_model)

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
PLAN_CASES = 10  # cases linked for planning (the fingerprint); prediction reads other files directly
GRID_BOX_TARGET = 2.0  # #22: grid at most 2x box per volume


# ---------------------------------------------------------------------------------- parts A and B
def hippocampus(args, tmp: Path, t_start: float) -> dict:
    raw = tmp / "raw"
    raw.mkdir()
    from desam_nnu.paths import link_dataset_subset
    link_dataset_subset(str(DATASET), str(raw), PLAN_CASES)
    name = DATASET.name
    images = sorted((DATASET / "imagesTr").glob("*_0000.nii.gz"))[:args.cases]
    if len(images) < args.cases:
        sys.exit(f"error: {DATASET}: only {len(images)} images")
    inputs = {args.cases: _input_folder(tmp / "in_n", images), 1: _input_folder(tmp / "in_1", images[:1])}
    counts = sorted(inputs, reverse=True)
    logs = tmp / "logs"
    logs.mkdir()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    # setup: plan each backbone (fingerprint once, copied), nnU-Net's plans from the same fingerprint
    envs, models, fingerprint = {}, {}, None
    for backbone in args.backbones:
        env = envs[backbone] = _env(tmp / backbone, raw)
        if fingerprint is not None:
            Path(env["nnUNet_preprocessed"], name).mkdir()
            shutil.copy(fingerprint, Path(env["nnUNet_preprocessed"], name, "dataset_fingerprint.json"))
        _check_run([str(BIN / "desam_plan_and_preprocess"), "-d", str(DATASET_ID), "-np", "2", "--backbone", backbone],
                   env, logs / f"plan_{backbone}.log")
        fingerprint = fingerprint or Path(env["nnUNet_preprocessed"], name, "dataset_fingerprint.json")
        models[backbone] = write_desam_model(env, name)
        progress(f"planned {backbone} on {PLAN_CASES} cases: patch {models[backbone]['patch_size']}, "
                 f"input {models[backbone]['image_size']}; random-weight model folder written")
    env = envs["nnunet"] = _env(tmp / "nnunet", raw)
    Path(env["nnUNet_preprocessed"], name).mkdir()
    shutil.copy(fingerprint, Path(env["nnUNet_preprocessed"], name, "dataset_fingerprint.json"))
    _check_run([str(BIN / "nnUNetv2_plan_experiment"), "-d", str(DATASET_ID)], env, logs / "plan_nnunet.log")
    models["nnunet"] = write_nnunet_model(env, name)
    models["nnunet"]["arithmetic"] = nnunet_arithmetic(
        str(Path(env["nnUNet_results"], name, "nnUNetTrainer__nnUNetPlans__2d")), [str(i) for i in images])
    progress(f"planned nnU-Net 2d (patch {models['nnunet']['patch_size']}, batch {models['nnunet']['batch_size']}); "
             f"random-weight model folder written")

    # measurements, interleaved. In-process: per backbone one process, grid and box alternating per
    # volume. Whole commands: nnU-Net, then each DeSAM variant, each with N and 1 volume(s) back to back
    # (alternating which goes first), `repeats` rounds, best of the rounds.
    one: Dict[str, dict] = {}
    per_volume = tmp / "in_per_volume"
    for image in images:
        _input_folder(per_volume / image.name[:-len("_0000.nii.gz")], [image])
    for backbone in args.backbones:
        cmd = [sys.executable, __file__, "--one", backbone, str(per_volume), str(tmp / "out_one"), str(args.repeats)] + \
            (["--profile"] if args.profile else [])
        r = one[backbone] = child_result(cmd, envs[backbone], f"{backbone} in-process run")
        shutil.rmtree(tmp / "out_one", ignore_errors=True)
        for mode in MODES:
            m = r["modes"][mode]
            loads = ", ".join(f"{x[0]['load_before']:.1f}" for x in m["all_runs"].values())
            progress(f"{backbone:6s} {mode:4s} in-process: {m['sec_per_volume']:.1f} s/volume "
                     f"({m['cpu_s_per_volume']:.1f} CPU s, {m['tiles_per_volume']:.0f} tiles), peak RSS "
                     f"{m['peak_rss_mib']:.0f} MiB; load average before each volume "
                     f"{loads}")
    whole: Dict[str, List[dict]] = defaultdict(list)
    variants = ["nnunet"] + [f"{b}/{m}" for b in args.backbones for m in MODES]
    for r in range(args.repeats):
        for k, v in enumerate(variants):
            backbone, _, mode = v.partition("/")
            for n in (counts if (k + r) % 2 == 0 else counts[::-1]):
                cmd = _predict_cmd(mode or "nnunet", inputs[n], tmp / "out")
                x = _measured(cmd, envs[backbone], tmp / "out", logs / f"{v.replace('/', '_')}_{n}.log", n)
                x["command"] = " ".join([Path(cmd[0]).name] + cmd[1:])
                whole[f"{v}@{n}"].append(x)
                progress(f"{v:10s} whole command, {n} volume(s): {x['seconds']:.1f} s ({x['cpu_s']:.0f} CPU s), "
                         f"peak tree RSS {x['peak_tree_rss'] / MIB:.0f} MiB; load average before "
                         f"{x['load_before']:.1f}")
    best = {k: dict(min(xs, key=lambda x: x["seconds"]), peak_tree_rss=max(x["peak_tree_rss"] for x in xs),
                    all_seconds=[x["seconds"] for x in xs]) for k, xs in whole.items()}
    return {"models": models, "one": one, "whole": best, "counts": counts,
            "volumes": [p.name for p in images]}


def report_hippocampus(res: dict, args) -> dict:
    n = args.cases
    one, whole = res["one"], res["whole"]
    print(f"\nA. grid (9 x 9 prompts, --iou-thresh {GRID_IOU_THRESH:g}: PDMM always runs) against box, "
          f"{n} hippocampus volume(s), --disable-tta, random weights, {os.cpu_count()} CPU cores, torch threads "
          f"{one[args.backbones[0]]['threads']}")
    print(f"In-process: one process per backbone, predictor initialised once (start-up: imports + model), "
          f"-npp 0 -nps 0, grid and box alternating per volume, best of {args.repeats} round(s) per volume; "
          f"seconds per volume and its parts (encoder, PRIM, PDMM, the rest of nnU-Net's sliding window, "
          f"preprocessing, export), tiles encoded per volume, peak RSS of the process during that mode's runs. "
          f"Whole command: `desam_predict` wall time for all {n} volume(s), start-up included, and peak RSS of "
          f"its process tree (with its preprocessing and export workers).\n")
    print("| backbone | input | mode | tiles / volume | s / volume | CPU s / volume | encoder | PRIM | PDMM | "
          "rest of window | preprocess | export | start-up s | peak RSS MiB | whole command s | "
          "whole peak tree RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for mode in MODES:
            o, w = one[backbone], whole[f"{backbone}/{mode}@{n}"]
            r = o["modes"][mode]
            p = r["parts_s_per_volume"]
            rest = p.get("sliding_window", 0) - p.get("encoder", 0) - p.get("prim", 0) - p.get("pdmm", 0)
            print(f"| {backbone} | {o['image_size']} | {mode} | {r['tiles_per_volume']:.1f} | "
                  f"{r['sec_per_volume']:.2f} | {r['cpu_s_per_volume']:.2f} | {p.get('encoder', 0):.2f} | {p.get('prim', 0):.2f} | "
                  f"{p.get('pdmm', 0):.2f} | {rest:.2f} | {p.get('preprocess', 0):.2f} | {p.get('export', 0):.2f} | "
                  f"{o['init_s']:.1f} | {r['peak_rss_mib']:.0f} | {w['seconds']:.1f} | "
                  f"{w['peak_tree_rss'] / MIB:.0f} |")
    print("\n| backbone | grid / box, s per volume (in-process) | same in CPU s | grid / box, whole command | "
          "target | grid tiles whose best prompt IoU >= plans' threshold |")
    print("|---|---|---|---|---|---|")
    summary = []
    for backbone in args.backbones:
        g, b = one[backbone]["modes"]["grid"], one[backbone]["modes"]["box"]
        ratio = g["sec_per_volume"] / b["sec_per_volume"]
        cpu_ratio = g["cpu_s_per_volume"] / b["cpu_s_per_volume"]
        whole_ratio = whole[f"{backbone}/grid@{n}"]["seconds"] / whole[f"{backbone}/box@{n}"]["seconds"]
        met = ratio <= GRID_BOX_TARGET
        summary.append({"backbone": backbone, "grid_over_box_per_volume": ratio, "grid_over_box_cpu": cpu_ratio,
                        "grid_over_box_whole": whole_ratio,
                        "target": GRID_BOX_TARGET, "met": met})
        print(f"| {backbone} | {ratio:.2f}x | {cpu_ratio:.2f}x | {whole_ratio:.2f}x | <= {GRID_BOX_TARGET:g}x "
              f"{'met' if met else 'MISSED'} | {g['tiles_passing_plans_thresh']} / {g['grid_tiles']} "
              f"(max {g['best_prompt_iou_max']:.2f}, threshold {g['plans_iou_thresh']}) |")

    counts = res["counts"]
    print(f"\nB. whole commands against `nnUNetv2_predict -c 2d` (random weights), TTA off, -npp 1 -nps 1, "
          f"{n} and 1 volume(s); marginal = (t_{n} - t_1) / {n - 1} (start-up removed)\n" if n > 1 else
          "\nB. whole commands against `nnUNetv2_predict -c 2d`, 1 volume (no marginal: use --cases >= 2)\n")
    print(f"| model | mode | t_{n} s | s / volume (t_{n} / {n}) | t_1 s | marginal s / volume | "
          f"ours / nnU-Net, t_{n} | ours / nnU-Net, marginal | CPU s, t_{n} | ours / nnU-Net, CPU s t_{n} | "
          f"peak tree RSS MiB ({n} vol.) | in-process s / volume (A) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def row(v: str) -> dict:
        tn, t1 = whole[f"{v}@{n}"]["seconds"], whole[f"{v}@1"]["seconds"]
        return {"variant": v, "t_n": tn, "t_1": t1, "per_volume": tn / n, "cpu_n": whole[f"{v}@{n}"]["cpu_s"],
                "marginal": (tn - t1) / (n - 1) if n > 1 else None,
                "peak_tree_rss_mib": whole[f"{v}@{n}"]["peak_tree_rss"] / MIB}

    ref = row("nnunet")
    rows = [dict(ref, ratio_whole=1.0, ratio_marginal=1.0, ratio_cpu=1.0)]
    for v in [f"{b}/{m}" for b in args.backbones for m in MODES]:
        r = row(v)
        r["ratio_whole"] = r["t_n"] / ref["t_n"]
        r["ratio_cpu"] = r["cpu_n"] / ref["cpu_n"]
        r["ratio_marginal"] = r["marginal"] / ref["marginal"] if n > 1 and ref["marginal"] > 0 else None
        backbone, _, mode = v.partition("/")
        r["in_process_per_volume"] = one[backbone]["modes"][mode]["sec_per_volume"]
        rows.append(r)

    def fmt(x, spec=".2f", suffix=""):
        return "-" if x is None else f"{x:{spec}}{suffix}"

    for r in rows:
        model, _, mode = r["variant"].partition("/")
        label = "nnU-Net 2d" if model == "nnunet" else f"DeSAM {model}"
        mode = "-" if model == "nnunet" else (f"grid (iou-thresh {GRID_IOU_THRESH:g})" if mode == "grid" else mode)
        print(f"| {label} | {mode} | {r['t_n']:.1f} | {r['per_volume']:.2f} | {r['t_1']:.1f} | "
              f"{fmt(r['marginal'])} | {r['ratio_whole']:.2f}x | {fmt(r['ratio_marginal'], suffix='x')} | "
              f"{r['cpu_n']:.0f} | {r['ratio_cpu']:.2f}x | {r['peak_tree_rss_mib']:.0f} | {fmt(r.get('in_process_per_volume'))} |")
    if n > 1 and any(r["marginal"] <= 0 for r in rows):
        print("\nA marginal <= 0 means the load of other processes changed between t_N and t_1 by more than the "
              "volumes cost: rerun with --repeats 2 or more.")
    return {"grid_vs_box": summary, "vs_nnunet": rows, "counts": counts}


# ---------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["tiny", "vit_b"])
    p.add_argument("--cases", type=int, default=3, help="hippocampus volumes to predict (N); 0 skips parts A and B")
    p.add_argument("--ct", action="store_true",
                   help="also part C: peak RSS on a synthetic 512 x 512 x 300 CT (about 3 minutes more)")
    p.add_argument("--ct-depth", type=int, default=300, help="slices of the synthetic CT to predict (part C)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every measurement; the best round counts")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of every predictor (0: the commands' defaults, all cores); 1 keeps a CPU "
                        "shared with other jobs from stalling 2-thread OpenMP regions")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the in-process grid runs (adds overhead to them; top functions are printed)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "predict.json")
    p.add_argument("--one", nargs=4, metavar=("BACKBONE", "INPUTS", "OUTPUTS", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if serve_one(args.one, one_run, args.profile):
        return
    if args.cases < 0 or args.repeats < 1 or args.threads < 0:
        sys.exit("error: --cases and --threads must be >= 0 and --repeats >= 1")
    predict_setup.THREADS = args.threads
    t_start = time.perf_counter()
    command = f"python benchmarks/predict.py --backbones {' '.join(args.backbones)} --cases {args.cases}" + \
        (f" --repeats {args.repeats}" if args.repeats > 1 else "") + \
        (f" --threads {args.threads}" if args.threads else "") + \
        (f" --ct --ct-depth {args.ct_depth}" if args.ct else "") + (" --profile" if args.profile else "")
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "cases": args.cases,
              "repeats": args.repeats, "threads": args.threads or "default",
              "load_average_at_start": os.getloadavg(),
              "backbones": args.backbones, "grid_iou_thresh": GRID_IOU_THRESH, "command": command}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        if args.cases == 0:
            print("skipped parts A and B (--cases 0)")
        elif DATASET.is_dir():
            res = hippocampus(args, Path(tmp), t_start)
            result.update(res)
            result.update(report_hippocampus(res, args))
        else:
            print(f"skipped parts A and B: {DATASET} not found (the hippocampus dataset lives in ../shared)")
            result["skipped"] = f"{DATASET} not found"
        if args.ct:
            result["ct"] = synthetic_ct(args, Path(tmp), t_start)
    result["total_s"] = time.perf_counter() - t_start
    result["load_average_at_end"] = os.getloadavg()
    if args.profile:
        for key, r in result.get("one", {}).items():
            if "profile_top" in r:
                print(f"\ncProfile of the in-process grid runs, {key}, top functions by own time:\n")
                print("| function | calls | own s | cumulative s |\n|---|---|---|---|")
                for f in r["profile_top"][:15]:
                    print(f"| `{f['function']}` | {f['calls']} | {f['tottime_s']} | {f['cumtime_s']} |")
    # one run per invocation, merged by what it measured: several invocations build one table
    parts = ([f"{'_'.join(args.backbones)}_hippocampus_{args.cases}_volume{'s' if args.cases != 1 else ''}"]
             if args.cases else []) + ([f"ct_512x512x{args.ct_depth}"] if args.ct else [])
    record_run(args.out, {"measured": {"_".join(parts) or "empty": result}}, "predict.py")
    print(f"\ntotal {result['total_s']:.0f} s; written {args.out}\nrerun: {command}")


if __name__ == "__main__":
    main()
