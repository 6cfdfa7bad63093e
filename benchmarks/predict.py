"""Benchmark: desam_predict (grid against box mode, against nnU-Net's 2D predictor, CT memory), in one run.

A. DeSAM's automatic grid mode (9 x 9 = 81 prompts) against box mode (one whole-tile box) for each
   backbone (default tiny and vit_b) at the planned input size, on N hippocampus volumes
   (../shared/datasets/Dataset004_Hippocampus). Seconds per volume without start-up: a child process
   (``--one``) initialises DeSAMPredictor once and predicts each volume in-process (-npp 0 -nps 0) in
   both modes, alternating (grid, box; then box, grid), so that both see the same load of the shared
   CPU; the time is split into encoder / PRIM / PDMM / the rest of nnU-Net's sliding window /
   preprocessing / export, tiles are counted (``PromptedDeSAM.tile_calls``), and the peak RSS per
   mode is read from VmHWM (reset between runs). Also each mode as a whole ``desam_predict`` command
   (``proc_tree.measure``: wall time, peak RSS of the process tree). Target: grid <= 3x box per volume.
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
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_tree import measure  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "datasets" / "Dataset004_Hippocampus"
DATASET_ID = 4
PLAN_CASES = 10  # cases linked for planning (the fingerprint); prediction reads other files directly
MODES = ("grid", "box")
GRID_IOU_THRESH = -1000.0  # every tile's best grid prompt goes through PDMM (worst case for grid)
GRID_BOX_TARGET = 3.0
CT_TARGET_BYTES = 6 * 1000 ** 3  # 6 GB
CT_ID, CT_NAME = 901, "SynthCT"
CT_SPACING_XYZ = (0.8, 0.8, 2.5)
BIN = Path(sys.executable).parent
MIB = 2 ** 20


# ---------------------------------------------------------------------------------- child process
def _peak_rss_reset() -> None:
    """Reset this process's resident high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def one_run(backbone: str, input_root: str, output_root: str, repeats: int, profile: bool) -> dict:
    """Inside a fresh process (nnU-Net folders from the environment): initialise DeSAMPredictor once and
    predict each volume (a folder of its own under ``input_root``) in this process (-npp 0 -nps 0) in
    grid and in box mode, alternating (grid, box / box, grid for the next volume), ``repeats`` rounds,
    so that both modes see the same load. Times the parts, counts tiles, peak RSS per mode."""
    t0 = time.perf_counter()
    import torch
    from desam_nnu.inference import predictor as P
    from desam_nnu.inference.model_folder import resolve_model_folder
    from desam_nnu.inference.prompted import PromptSettings

    predictor = P.DeSAMPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False,
                                 prompt_overrides=dict(mode="grid", iou_threshold=GRID_IOU_THRESH))
    predictor.initialize_from_trained_model_folder(resolve_model_folder(None, DATASET_ID), [0], "checkpoint_final.pth")
    init_s = time.perf_counter() - t0
    net = predictor.network  # PromptedDeSAM; the two modes differ only in its PromptSettings
    cfg = predictor.configuration_manager.desam
    settings = {"grid": net.prompts, "box": PromptSettings.from_plans(cfg, mode="box")}
    parts: Dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] += time.perf_counter() - start
        return wrapper

    desam = net.desam
    desam.image_encoder.forward = timed("encoder", desam.image_encoder.forward)
    desam.prim.forward = timed("prim", desam.prim.forward)
    desam.pdmm.encode_context = timed("pdmm", desam.pdmm.encode_context)
    desam.pdmm.decode = timed("pdmm", desam.pdmm.decode)
    best_iou: List[float] = []
    grid_candidates = desam.grid_candidates

    def recording_grid_candidates(*args, **kwargs):
        result = grid_candidates(*args, **kwargs)
        best_iou.append(float(result.prompt_iou.max()))  # the tile's best prompt, any class
        return result

    desam.grid_candidates = recording_grid_candidates
    predictor.predict_logits_from_preprocessed_data = timed("sliding_window",
                                                            predictor.predict_logits_from_preprocessed_data)
    P._preprocess = timed("preprocess", P._preprocess)
    P.export_case_atomically = timed("export", P.export_case_atomically)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()

    with torch.no_grad():  # warm-up, one random tile per mode: the first call of each path allocates
        tile = torch.rand(1, cfg.num_input_channels, *cfg.patch_size) * 255
        for mode in MODES:
            net.prompts = settings[mode]
            net(tile)
    best_iou.clear()
    volumes = sorted(os.listdir(input_root))
    runs = {m: {v: [] for v in volumes} for m in MODES}  # seconds, parts, tiles, peak RSS per run
    for r in range(repeats):
        for i, volume in enumerate(volumes):
            for mode in (MODES if (i + r) % 2 == 0 else MODES[::-1]):
                net.prompts = settings[mode]
                parts.clear()
                tiles = net.tile_calls
                out = os.path.join(output_root, f"{mode}_{r}_{volume}")
                _peak_rss_reset()
                if profiler is not None and mode == "grid":
                    profiler.enable()
                load = os.getloadavg()[0]
                start, cpu = time.perf_counter(), time.process_time()
                report = predictor.predict_folder(os.path.join(input_root, volume), out,
                                                  num_processes_preprocessing=0, num_processes_export=0)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                if profiler is not None and mode == "grid":
                    profiler.disable()
                if report.failures or len(report.written) != 1:
                    raise RuntimeError(f"{mode} {volume}: prediction failed: {report.failures}")
                shutil.rmtree(out, ignore_errors=True)
                runs[mode][volume].append({"seconds": seconds, "cpu_s": cpu, "parts": dict(parts),
                                           "tiles": net.tile_calls - tiles, "peak_rss_mib": _peak_rss_mib(),
                                           "load_before": load})
    out = {"backbone": backbone, "image_size": cfg.image_size, "patch_size": list(cfg.patch_size),
           "volumes": volumes, "repeats": repeats, "init_s": init_s, "threads": torch.get_num_threads(),
           "peak_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "modes": {}}
    for mode in MODES:
        best = [min(runs[mode][v], key=lambda x: x["seconds"]) for v in volumes]  # best of repeats per volume
        n = len(volumes)
        names = sorted({k for b in best for k in b["parts"]})
        out["modes"][mode] = {
            "sec_per_volume": sum(b["seconds"] for b in best) / n,
            "cpu_s_per_volume": sum(b["cpu_s"] for b in best) / n,
            "seconds_per_case": [b["seconds"] for b in best],
            "parts_s_per_volume": {k: sum(b["parts"].get(k, 0.0) for b in best) / n for k in names},
            "tiles_per_volume": sum(b["tiles"] for b in best) / n,
            "peak_rss_mib": max(x["peak_rss_mib"] for v in volumes for x in runs[mode][v]),
            "all_runs": runs[mode]}
    out["modes"]["grid"].update(iou_thresh=GRID_IOU_THRESH, plans_iou_thresh=cfg.prompts.iou_threshold,
                                best_prompt_iou_max=max(best_iou) if best_iou else None, grid_tiles=len(best_iou),
                                tiles_passing_plans_thresh=sum(i >= cfg.prompts.iou_threshold for i in best_iou))
    if profiler is not None:
        out["profile_top"] = _profile_top(profiler, 25)
    return out


def _profile_top(profiler, k: int) -> List[dict]:
    import pstats
    stats = pstats.Stats(profiler).stats
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:k]
    return [{"function": f"{os.path.basename(f)}:{line}({fn})" if f != "~" else fn, "calls": nc,
             "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)} for (f, line, fn), (cc, nc, tt, ct, _) in rows]


# ---------------------------------------------------------------------------------- setup
THREADS = 0  # --threads: 0 leaves the commands' own thread counts (all cores)


def _env(root: Path, raw: Path) -> dict:
    env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="1", nnUNet_raw=str(raw),
               nnUNet_preprocessed=str(root / "preprocessed"), nnUNet_results=str(root / "results"))
    if THREADS:
        # torch's intra-op threads: OMP_NUM_THREADS where nothing sets them (desam_predict, --one);
        # nnUNetv2_predict sets all cores itself, and both predictors cap them at nnUNet_def_n_proc
        # while predicting (nnUNetPredictor.predict_logits_from_preprocessed_data)
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), nnUNet_def_n_proc=str(THREADS))
    for k in ("nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    return env


def _check_run(cmd: List[str], env: dict, log: Path) -> None:
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")


def write_desam_model(env: dict, dataset_name: str) -> dict:
    """A random-weight model folder as desam_train leaves it; returns the plans' DeSAM settings."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from desam_nnu.model import build_desam
    from desam_nnu.planners.plans import DeSAMPlansManager

    pre = Path(env["nnUNet_preprocessed"], dataset_name)
    plans = load_json(str(pre / "DeSAMPlans.json"))
    cfg = DeSAMPlansManager(plans).get_configuration("desam_2d").desam
    folder = Path(env["nnUNet_results"], dataset_name, "DeSAMTrainer__DeSAMPlans__desam_2d")
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "DeSAMPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.manual_seed(0)
    network = build_desam(cfg.backbone, image_size=cfg.image_size, num_classes=cfg.num_classes, pretrained=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "DeSAMTrainer",
                "init_args": {"configuration": "desam_2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    return {"backbone": cfg.backbone, "image_size": cfg.image_size, "patch_size": list(cfg.patch_size)}


def write_nnunet_model(env: dict, dataset_name: str) -> dict:
    """nnU-Net's 2d configuration with random weights, as nnUNetv2_train leaves the model folder."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = Path(env["nnUNet_preprocessed"], dataset_name)
    dataset_json = load_json(str(pre / "dataset.json"))
    plans_manager = PlansManager(load_json(str(pre / "nnUNetPlans.json")))
    cm = plans_manager.get_configuration("2d")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, cm, determine_num_input_channels(plans_manager, cm, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    folder = Path(env["nnUNet_results"], dataset_name, "nnUNetTrainer__nnUNetPlans__2d")
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    return {"patch_size": list(cm.patch_size), "batch_size": cm.batch_size}


def _input_folder(folder: Path, images: List[Path]) -> Path:
    folder.mkdir(parents=True)
    for image in images:
        os.symlink(image, folder / image.name)
    return folder


def _predict_cmd(backbone_mode: str, inp: Path, out: Path, dataset: int = DATASET_ID) -> List[str]:
    if backbone_mode == "nnunet":
        return [str(BIN / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(dataset), "-c", "2d",
                "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    cmd = [str(BIN / "desam_predict"), "-i", str(inp), "-o", str(out), "-d", str(dataset), "-f", "0", "-device", "cpu",
           "--disable-tta"]
    return cmd + ([f"--iou-thresh={GRID_IOU_THRESH:g}"] if backbone_mode == "grid" else ["--prompt-mode", "box"])


def _measured(cmd: List[str], env: dict, out: Path, log: Path, expect: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = measure(cmd, env=env, log=str(log))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command and its reaped workers: less sensitive to other processes than wall time
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["load_before"] = load
    written = len([f for f in os.listdir(out) if f.endswith(".nii.gz")]) if out.is_dir() else 0
    if result["returncode"] != 0 or written != expect:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {result['returncode']}, {written}/{expect} written):\n"
                 f"{log.read_text()[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return result


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
        done = subprocess.run(cmd, env=envs[backbone], capture_output=True, text=True)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not line:
            sys.exit(f"error: {backbone} in-process run failed:\n{done.stderr[-3000:]}")
        r = one[backbone] = json.loads(line[0][len("RESULT "):])
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


# ---------------------------------------------------------------------------------- part C
def _write_ct(path: Path, shape_zyx, rng, center_zyx):
    """Write an int16 CT: air outside an elliptic body (soft tissue ~40 HU, noise) and a bright sphere
    (~300 HU, radius 30 mm); returns the sphere's labels."""
    import numpy as np
    z, y, x = shape_zyx
    yy, xx = np.meshgrid(np.arange(y) - y / 2, np.arange(x) - x / 2, indexing="ij")
    body = (yy / (0.42 * y)) ** 2 + (xx / (0.46 * x)) ** 2 < 1
    volume = np.empty(shape_zyx, np.int16)
    labels = np.zeros(shape_zyx, np.uint8)
    sx, sy, sz = CT_SPACING_XYZ
    radius_mm = 30.0
    for k in range(z):
        dz = (k - center_zyx[0]) * sz
        sl = np.where(body, 40 + 20 * rng.standard_normal((y, x)), -1000 + 5 * rng.standard_normal((y, x)))
        if abs(dz) < radius_mm:
            sphere = ((yy + y / 2 - center_zyx[1]) * sy) ** 2 + ((xx + x / 2 - center_zyx[2]) * sx) ** 2 < \
                radius_mm ** 2 - dz ** 2
            sl[sphere] = 300 + 20 * rng.standard_normal(int(sphere.sum()))
            labels[k][sphere] = 1
        volume[k] = np.clip(sl, -1024, 3071).astype(np.int16)
    _write_nifti(volume, path)
    return labels


def _write_nifti(array, path: Path) -> None:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(CT_SPACING_XYZ)
    img.SetOrigin((-200.0, -180.0, 0.0))
    sitk.WriteImage(img, str(path))


def synthetic_ct(args, tmp: Path, t_start: float) -> dict:
    import numpy as np

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    raw = tmp / "ct_raw"
    ds = raw / f"Dataset{CT_ID:03d}_{CT_NAME}"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    train_shape = (40, 512, 512)
    for i in range(3):
        center = (20 + rng.integers(-5, 6), 256 + rng.integers(-60, 61), 256 + rng.integers(-60, 61))
        labels = _write_ct(ds / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", train_shape, rng, center)
        _write_nifti(labels, ds / "labelsTr" / f"ct_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1}, "numTraining": 3,
        "file_ending": ".nii.gz", "name": CT_NAME}, indent=2))
    env = _env(tmp / "ct", raw)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    start = time.perf_counter()
    _check_run([str(BIN / "desam_plan_and_preprocess"), "-d", str(CT_ID), "-np", "2", "--backbone", "tiny"], env,
               logs / "plan_ct.log")
    plan_s = time.perf_counter() - start
    model = write_desam_model(env, ds.name)
    progress(f"synthetic CT: 3 training cases 512 x 512 x 40 planned in {plan_s:.0f} s (tiny: patch "
             f"{model['patch_size']}, input {model['image_size']})")
    depth = args.ct_depth
    inp = tmp / "ct_in"
    inp.mkdir()
    _write_ct(inp / "ct_test_0000.nii.gz", (depth, 512, 512), rng, (depth // 2, 256, 256))
    cmd = [str(BIN / "desam_predict"), "-i", str(inp), "-o", str(tmp / "ct_out"), "-d", str(CT_ID), "-f", "0",
           "-device", "cpu", "--prompt-mode", "box", "--disable-tta", "--tile-step", "1.0"]
    progress(f"synthetic CT 512 x 512 x {depth} written; predicting ({' '.join([Path(cmd[0]).name] + cmd[1:])})")
    r = _measured(cmd, env, tmp / "ct_out", logs / "predict_ct.log", 1)
    progress(f"synthetic CT predicted: {r['seconds']:.0f} s, peak tree RSS {r['peak_tree_rss'] / MIB:.0f} MiB")
    met = r["peak_tree_rss"] <= CT_TARGET_BYTES
    print("\nC. peak RSS of desam_predict on one synthetic CT, CPU, box mode, --disable-tta --tile-step 1.0, random "
          "weights\n")
    print("| volume (x y z) | backbone | patch | input | wall s | peak tree RSS | largest process | target |")
    print("|---|---|---|---|---|---|---|---|")
    single = r["peak_process_rss"]
    print(f"| 512 x 512 x {depth} | tiny | {model['patch_size'][0]} | {model['image_size']} | {r['seconds']:.0f} | "
          f"{r['peak_tree_rss'] / 1e9:.2f} GB ({r['peak_tree_rss'] / MIB:.0f} MiB) | "
          f"{'-' if single is None else f'{single / 1e9:.2f} GB'} | <= 6 GB {'met' if met else 'MISSED'} |")
    return {"shape_xyz": [512, 512, depth], "spacing_xyz": list(CT_SPACING_XYZ), "model": model, "plan_s": plan_s,
            "seconds": r["seconds"], "peak_tree_rss": r["peak_tree_rss"], "peak_process_rss": single,
            "target_bytes": CT_TARGET_BYTES, "met": met, "command": " ".join([Path(cmd[0]).name] + cmd[1:])}


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
    if args.one:
        b, i, o, r = args.one
        print("RESULT " + json.dumps(one_run(b, i, o, int(r), args.profile)))
        return
    if args.cases < 0 or args.repeats < 1 or args.threads < 0:
        sys.exit("error: --cases and --threads must be >= 0 and --repeats >= 1")
    global THREADS
    THREADS = args.threads
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
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = old.get("runs", {"earlier": old} if old else {})
    runs["_".join(parts) or "empty"] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".partial")
    tmp_out.write_text(json.dumps({"note": old.get("note", "runs of benchmarks/predict.py, one per invocation"),
                                   "runs": runs}, indent=2))
    os.replace(tmp_out, args.out)
    print(f"\ntotal {result['total_s']:.0f} s; written {args.out}\nrerun: {command}")


if __name__ == "__main__":
    main()
