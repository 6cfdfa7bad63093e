"""Part A of benchmarks/predict.py, inside the child process (``predict.py --one``): one DeSAMPredictor,
each volume predicted in grid and in box mode in this process, the time split into encoder / PRIM /
PDMM / sliding window / preprocessing / export, tiles counted, peak RSS per mode."""
import os
import resource
import shutil
import time
from collections import defaultdict
from typing import Dict, List

from arithmetic import MATMUL_SIZE, PartFlops, matmul_gflops

DATASET_ID = 4
MODES = ("grid", "box")
GRID_IOU_THRESH = -1000.0  # every tile's best grid prompt goes through PDMM (worst case for grid)


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
    flops = PartFlops()  # the same parts, counted in floating-point operations on one tile per mode
    desam.image_encoder.forward = flops.wrap("encoder", timed("encoder", desam.image_encoder.forward))
    desam.prim.forward = flops.wrap("prim", timed("prim", desam.prim.forward))
    desam.pdmm.encode_context = flops.wrap("pdmm", timed("pdmm", desam.pdmm.encode_context))
    desam.pdmm.decode = flops.wrap("pdmm", timed("pdmm", desam.pdmm.decode))
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

    # the encoder desam_predict runs (ONNX Runtime on a CPU: inference/onnx_encoder.py), timed as the encoder
    fast = net.fast_encoder
    encode = desam.encode if fast is None else fast
    if fast is not None:
        net.fast_encoder = timed("encoder", fast)
    with torch.no_grad():  # warm-up, one random tile per mode: the first call of each path allocates (or exports)
        tile = torch.rand(1, cfg.num_input_channels, *cfg.patch_size) * 255
        for mode in MODES:
            net.prompts = settings[mode]
            net(tile)
        gflop_per_tile = {}
        counted_in, net.fast_encoder = net.fast_encoder, None  # the arithmetic is counted on PyTorch's encoder
        for mode in MODES:
            net.prompts = settings[mode]
            with flops.counting() as counted:
                net(tile)
            gflop_per_tile[mode] = {part: n / 1e9 for part, n in counted.items()}
        net.fast_encoder = counted_in
    arithmetic = {"gflop_per_tile": gflop_per_tile, "matmul_size": MATMUL_SIZE, "matmul_gflops": matmul_gflops()}
    best_iou.clear()
    encoder_ms = _encoder_ms_per_tile(encode, cfg, sorted({1, predictor.tiles_per_call}))
    parts.clear()
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
           "tiles_per_call": predictor.tiles_per_call, "encoder_ms_per_tile": encoder_ms, "arithmetic": arithmetic,
           "encoder_runtime": "pytorch" if fast is None else "onnxruntime",
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


def _encoder_ms_per_tile(encode, cfg, batches: List[int], rounds: int = 3) -> Dict[str, float]:
    """The image encoder alone (``encode``: the predictor's, ``DeSAM.encode`` or its ONNX Runtime copy) on ``b``
    random RGB tiles [b, 3, S, S] at once, for each ``b`` in
    ``batches`` (1 and the predictor's tiles per call): milliseconds per tile, best of ``rounds`` calls,
    after one warm-up call per batch size. Says what batching the tiles buys in the encoder itself."""
    import torch
    out = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.rand(b, 3, cfg.image_size, cfg.image_size) * 255
            encode(x)
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                encode(x)
                best = min(best, time.perf_counter() - start)
            out[str(b)] = 1000 * best / b
    return out


def _profile_top(profiler, k: int) -> List[dict]:
    import pstats
    stats = pstats.Stats(profiler).stats
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:k]
    return [{"function": f"{os.path.basename(f)}:{line}({fn})" if f != "~" else fn, "calls": nc,
             "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)} for (f, line, fn), (cc, nc, tt, ct, _) in rows]
