"""benchmarks/run_all.py renders BENCHMARKS.md from the results' JSON (no benchmark runs here)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_all = _load()


def _decoder(single: float, grid: float, loop: float) -> dict:
    return {"meta": {"device": "cpu", "threads": 2, "image_size": 1024, "grid_points": 81, "top_k": 1, "repeats": 3},
            "results": [{"backbone": "vit_h", "pdmm_input_width": 1280, "prompts": 81, "top_k": 1, "single_ms": single,
                         "grid_ms": grid, "grid_prim_ms": grid / 2, "loop_ms": loop, "loop_measured_prompts": 9}]}


def _predict_run() -> dict:
    modes = {"grid": {"sec_per_volume": 2.0, "tiles_per_volume": 35.0,
                      "parts_s_per_volume": {"encoder": 1.0, "prim": 0.5, "pdmm": 0.4}},
             "box": {"sec_per_volume": 1.0, "tiles_per_volume": 35.0,
                     "parts_s_per_volume": {"encoder": 0.8, "prim": 0.1, "pdmm": 0.1}}}
    return {"machine": "x86_64", "cpus": 2, "cases": 2, "command": "python benchmarks/predict.py --backbones tiny --cases 2 --ct",
            "one": {"tiny": {"backbone": "tiny", "image_size": 256, "patch_size": [56, 56], "modes": modes}},
            "counts": [2, 1],
            "grid_vs_box": [{"backbone": "tiny", "grid_over_box_per_volume": 2.0, "target": 3.0, "met": True}],
            "vs_nnunet": [{"variant": "nnunet", "t_n": 10.0, "t_1": 6.0, "peak_tree_rss_mib": 4000.0},
                          {"variant": "tiny/grid", "t_n": 30.0, "t_1": 20.0, "peak_tree_rss_mib": 1000.0},
                          {"variant": "tiny/box", "t_n": 5.0, "t_1": 4.0, "peak_tree_rss_mib": 2000.0}],
            "ct": {"shape_xyz": [512, 512, 300], "spacing_xyz": [0.8, 0.8, 2.5],
                   "model": {"backbone": "tiny", "image_size": 1024, "patch_size": [512, 512]},
                   "seconds": 100.0, "peak_tree_rss": 3 * 2 ** 30, "peak_process_rss": 2 ** 30,
                   "target_bytes": 6_000_000_000, "met": True}}


def _train_rows() -> list:
    cache = {"batch_size": 8, "image_size": 256, "peak_rss_mib": 900.0, "prepare_s": 10.0, "cache_items": 100,
             "official_float32_bytes_per_slice": 400}
    return [dict(cache, backbone="vit_b", mode="cache", dtype="float16", sec_per_iter=1.0, cache_bytes_per_slice=100),
            dict(cache, backbone="vit_b", mode="cache", dtype="int8", sec_per_iter=1.0, cache_bytes_per_slice=60),
            {"backbone": "vit_b", "mode": "online", "dtype": "float16", "batch_size": 8, "image_size": 256,
             "sec_per_iter": 4.0, "peak_rss_mib": 1800.0}]


def _dice_row(tool: str, mean: float, **kw) -> dict:
    """A dice_budget.py row (the equal-wall-budget format)."""
    return dict({"tool": tool, "budget_clock": "wall", "minutes": 30.0, "budget_s": 1800.0, "cases": 40,
                 "dice": {"1": mean, "2": mean, "mean": mean, "cases": 8},
                 "dice_final_validation": {"1": mean, "2": mean, "mean": mean, "cases": 8},
                 "epochs": 1, "iterations_per_epoch": 250, "iterations": 250, "s_per_iteration": 6.0,
                 "planning_s": 20.0, "setup_s": 10.0, "train_wall_s": 1500.0, "validation_s": 300.0,
                 "find_best_s": 30.0, "postprocessing": [], "budget_spent": None,
                 "commands": {"train": "nnUNetv2_train 4 2d 0 -device cpu -tr nnUNetTrainer_1epoch"},
                 "machine": "x86_64", "cpus": 2, "command": "python benchmarks/dice_budget.py --minutes 30"}, **kw)


def _desam_race_row(mean: float, **kw) -> dict:
    return _dice_row("desam", mean, **dict(dict(
        backbone_flag=None, backbone="medsam_lite", image_size=128, epochs=30, iterations_per_epoch=50,
        iterations=1500, options={"num_iterations_per_epoch": 50, "prompt_mode": "mixed", "use_cache": False,
                                  "time_budget": 1800.0}), **kw))


FABRICATED = {
    "plan_preprocess.json": {"machine": "x86_64", "cpus": 2, "cases": 200, "num_processes": 2, "repeats": 2,
                             "rows": [{"measure": "wall time", "unit": "s", "ours": 1.0, "nnunet": 2.0,
                                       "target": "<= 1.2x"},
                                      {"measure": "peak RSS (process tree)", "unit": "MiB", "ours": 3000.0,
                                       "nnunet": 2000.0, "target": "<= 1.2x"}],
                             "command": "python benchmarks/plan_preprocess.py -np 2 --repeats 2"},
    "decoder.json": dict(_decoder(100.0, 400.0, 8000.0), gpu=dict(_decoder(10.0, 30.0, 800.0), device="Fake GPU 9000")),
    "train.json": {"machine": "x86_64", "cpus": 2, "cases": 20, "iterations": 20, "rows": _train_rows()},
    "encoder.json": {"meta": {"threads": 2, "batch": 1, "repeats": 5, "cpus": 2, "processor": "x86_64"},
                     "results": [{"backbone": "tiny", "image_size": 256, "encoder_params_m": 0.51, "ms_per_slice": 10.0,
                                  "cache_mib_per_slice_fp16": 0.12, "mask_logits": "64x64"},
                                 {"backbone": "vit_b", "image_size": 1024, "encoder_params_m": 89.67,
                                  "ms_per_slice": 1000.0, "cache_mib_per_slice_fp16": 20.0, "mask_logits": "256x256"}]},
    "cache_dice.json": {"backbone": "tiny", "cases": 40, "epochs": 4, "iterations": 50,
                        "rows": [{"dtype": "float16", "mean_dice": 0.2, "pseudo_dice_per_class": [0.6, 0.5]},
                                 {"dtype": "int8", "mean_dice": 0.1, "pseudo_dice_per_class": [0.3, 0.5]}],
                        "command": "python benchmarks/cache_dice.py --backbone tiny --cases 40 --epochs 4 --iterations 50"},
    "predict.json": {"measured": {"tiny": _predict_run(), "medsam_lite": {
        "command": "python benchmarks/predict.py --backbones medsam_lite --cases 3",
        "one": {"medsam_lite": {"backbone": "medsam_lite", "image_size": 128, "patch_size": [56, 56],
                                "tiles_per_call": 32, "encoder_ms_per_tile": {"1": 300.0, "32": 60.0},
                                "modes": {"grid": {"sec_per_volume": 40 / 3}, "box": {"sec_per_volume": 4.0}}}}}}},
    "encoder_levers.json": {"meta": {"backbone": "medsam_lite", "image_size": 128, "rounds": 5, "threads": 2},
                            "command": "python benchmarks/encoder_levers.py",
                            "results": [{"lever": "baseline", "batch": 1, "ms_per_tile": 200.0, "warmup_s": 1.0},
                                        {"lever": "baseline", "batch": 32, "ms_per_tile": 50.0, "warmup_s": 2.0},
                                        {"lever": "channels_last", "batch": 1, "ms_per_tile": 160.0, "warmup_s": 2.0,
                                         "max_abs_diff_vs_baseline": 0.0},
                                        {"lever": "int8", "batch": 1, "ms_per_tile": 100.0, "warmup_s": 2.0,
                                         "max_abs_diff_vs_baseline": 0.03},
                                        {"lever": "threads1", "batch": 32, "ms_per_tile": 90.0, "warmup_s": 2.0,
                                         "max_abs_diff_vs_baseline": 0.0}]},
    "encoder_batches.json": {"command": "python benchmarks/encoder_levers.py --levers baseline",
                             "results": [{"lever": "baseline", "batch": b, "ms_per_tile": ms}
                                         for b, ms in ((2, 220.0), (1, 200.0), (32, 400.0))]},
    "prim_attention.json": {"threads": 1, "rounds": 3, "command": "python benchmarks/prim_attention.py",
                            "results": [{"backbone": "medsam_lite", "image_size": 128, "neck_tokens": 1024,
                                         "cpu_s": {"sam": {"grid": 2.0, "train": 10.0, "prim train": 0.5},
                                                   "ours": {"grid": 1.5, "train": 10.0, "prim train": 0.4}},
                                         "grid_max_abs_diff": 1e-6,
                                         "chunks": [{"prompts_per_call": 81, "wall_s": 1.0, "max_abs_diff": 0.0},
                                                    {"prompts_per_call": 9, "wall_s": 0.8, "max_abs_diff": 2e-7}]}]},
    "litemedsam_box.json": {"machine": "x86_64", "cpus": 2, "threads": 2, "split_cases": 40, "axis": 0,
                            "results": {"128": {"dice": {"1": 0.4, "2": 0.4, "mean": 0.4}, "s_per_volume": 1.0,
                                                "per_case": {f"c{i}": {"1": 0.4, "2": 0.4} for i in range(8)}},
                                        "256": {"dice": {"1": 0.8, "2": 0.8, "mean": 0.8}, "s_per_volume": 4.0,
                                                "per_case": {f"c{i}": {"1": 0.8, "2": 0.8} for i in range(8)}}},
                            "command": "python benchmarks/litemedsam_box.py --sizes 128 256 --cases 40"},
    "dice_budget.json": {"note": "fabricated", "rows": {
        "nnunet_2d_30min_40cases": _dice_row("nnunet", 0.6, trainer="nnUNetTrainer_1epoch", planned_epochs=1),
        "desam_30min_40cases": _desam_race_row(0.3)}},
    "robustness.json": {"minutes": 30.0, "cases": ["c1", "c2"], "levels": [1, 3, 5], "use_mirroring": False,
                        "seconds": 600.0, "command": "python benchmarks/robustness.py --minutes 30 --cases 2",
                        "shifts": {"blur": {}, "motion": {}},
                        "summary": {"desam": {"blur": {"dice": {"0": 0.7}, "drop": {"1": 0.0, "3": 0.1, "5": 0.2},
                                                       "weighted": 0.65},
                                              "motion": {"dice": {"0": 0.7}, "drop": {"1": 0.1, "3": 0.2, "5": 0.6},
                                                         "weighted": 0.6}},
                                    "nnunet_2d": {"blur": {"dice": {"0": 0.8}, "drop": {"1": 0.0, "3": 0.2, "5": 0.4},
                                                           "weighted": 0.7},
                                                  "motion": {"dice": {"0": 0.8}, "drop": {"1": 0.0, "3": 0.1, "5": 0.2},
                                                             "weighted": 0.75}}}},
    "ensemble.json": {"backbone": "vit_b", "cases": 2, "folds": 5, "cpus": 2, "machine": "x86_64",
                      "command": "python benchmarks/ensemble.py --cases 2", "rows": {
                          "before": {"folder_bytes": 3600 * 2 ** 20, "predict": {
                              "1": {"seconds": 40.0, "peak_tree_rss": 1024 * 2 ** 20},
                              "5": {"seconds": 200.0, "peak_tree_rss": 4096 * 2 ** 20}}},
                          "after": {"folder_bytes": 400 * 2 ** 20, "predict": {
                              "1": {"seconds": 40.0, "peak_tree_rss": 1024 * 2 ** 20},
                              "5": {"seconds": 50.0, "peak_tree_rss": 1100 * 2 ** 20}}}}},
    "gpu_check.json": {"machine": "x86_64", "cpus": 16, "rows": [
        {"backbone": "vit_b", "image_size": 1024, "device": "Fake GPU 9000", "batch_size": 8, "cache_s_per_slice": 0.05,
         "train_s_per_iter": 0.25, "predict_box_s_per_slice": 0.06, "predict_grid_s_per_slice": 0.2,
         "cache_peak_gpu_mib": 3000.0, "train_peak_gpu_mib": 9000.0, "predict_box_peak_gpu_mib": 2500.0,
         "predict_grid_peak_gpu_mib": 4000.0, "command": "python benchmarks/gpu_check.py --out /tmp/g.json",
         "predict_box_tiles_per_call": 32, "predict_box_one_tile_s_per_slice": 0.3,
         "predict_box_one_tile_peak_gpu_mib": 900.0},
        {"family": "dapsam", "backbone": "medsam_lite", "image_size": 128, "device": "Fake GPU 9000", "batch_size": 8,
         "train_s_per_iter": 0.1, "predict_prompt_free_s_per_slice": 0.02, "train_peak_gpu_mib": 2000.0,
         "predict_prompt_free_peak_gpu_mib": 190.0, "command": "python benchmarks/gpu_check.py"}],
        "torch": "2.11.0+cu130", "cuda": "13.0", "cuda_tests": {"command": "python -m pytest -k cuda", "result": "4 passed"}},
    "prediction_options.json": {"meta": {"threads": 2, "torch": "2.14.1"}, "rows": [
        {"option": "bf16", "setting": "chosen (box)", "model": "DeSAM, 30min race", "cases": 40,
         "command": "python benchmarks/prediction_options.py --options bf16 --cases 40 --out /tmp/x.json",
         "exact": {"dice_per_class": {"1": 0.7, "2": 0.6}, "dice": 0.65, "s_per_volume": 12.0},
         "with_option": {"dice_per_class": {"1": 0.69, "2": 0.6}, "dice": 0.645, "s_per_volume": 6.0},
         "dice_change": -0.005, "within_rule": False},
        {"option": "coarse_grid", "setting": "grid IoU >= -1, top-1", "model": "DeSAM, 120min race", "cases": 10,
         "command": "python benchmarks/prediction_options.py --options coarse_grid --cases 10",
         "exact": {"dice_per_class": {"1": 0.7, "2": 0.6}, "dice": 0.65, "s_per_volume": 30.0},
         "with_option": {"dice_per_class": {"1": 0.7, "2": 0.599}, "dice": 0.6495, "s_per_volume": 20.0},
         "dice_change": -0.0005, "within_rule": True}]},
    "prompted_boxes.json": {
        "note": "hippocampus fold 0", "cases": ["hippocampus_001", "hippocampus_002"], "jitter_mm": 5.0, "seed": 0,
        "minutes": 30.0, "command": "python benchmarks/prompted_boxes.py --minutes 30",
        "rows": {"desam": {"dice": {"1": 0.8, "2": 0.7, "mean": 0.75, "cases": 2}, "s_per_volume": 12.0,
                           "model": "/work/main/benchmarks/work/dice_budget/desam_30min_200cases/m"},
                 "litemedsam": {"dice": {"1": 0.6, "2": 0.5, "mean": 0.55, "cases": 2}, "s_per_volume": 20.0,
                                "model": "/work/main/benchmarks/work/prompted_boxes/litemedsam_model"}},
        "vit_b": {"s_per_slice": 100.0, "slices": 1, "threads": 2, "parameters_m": 150.0}},
    "allocator.json": {"meta": {"rounds": 2, "libc": "glibc 2.36"},
                       "command": "python benchmarks/allocator.py --cases 5 --out /tmp/a.json", "rows": [
        {"setting": "grid", "model": "DeSAM, 120-minute race", "cases": 5, "identical_label_maps": True,
         "arms": {"glibc default": {"s_per_volume": 30.0, "all_s": [30.0, 31.0], "minor_faults_per_volume": 4.9e6,
                                    "peak_rss_mib": 1600.0, "dice": 0.7},
                  "freed memory kept": {"s_per_volume": 20.0, "all_s": [20.0, 21.0], "minor_faults_per_volume": 10,
                                        "peak_rss_mib": 1680.0, "dice": 0.7}}}]},
}


def _write(folder: Path, files: dict) -> Path:
    """Each file's results as its one run (results_file's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_text(json.dumps({"runs": [data]}))
    return folder


def _render(tmp_path: Path, files: dict) -> str:
    results = _write(tmp_path / "results", files)
    out = tmp_path / "doc" / "BENCHMARKS.md"
    out.parent.mkdir(exist_ok=True)
    assert run_all.main(["--render-only", "--results", str(results), "--out", str(out)]) == 0
    return out.read_text()


def _row(text: str, measure: str) -> list:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {measure} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_every_area_rendered_with_ratios_from_the_numbers(tmp_path):
    text = _render(tmp_path, FABRICATED)
    for title, *_ in run_all.SECTIONS:
        assert f"## {title}" in text
    assert "not measured yet" not in text
    assert "could not render" not in text
    assert "Absolute times depend on the machine" in text and "x86_64, 2 CPU cores" in text

    wall = _row(text, "wall time")
    assert wall[1:5] == ["1 s", "2 s (nnU-Net 2d)", "0.5x", "<= 1.2x, met"]
    assert wall[5] == "`python benchmarks/plan_preprocess.py -np 2 --repeats 2`"
    assert _row(text, "plan and preprocess, peak RSS (process tree)")[3:5] == ["1.5x", "<= 1.2x, missed"]
    vit_h = _row(text, "decoder, grid of 81 prompts vs 1 prompt, vit_h dims")
    assert vit_h[3:5] == ["4x", "<= 10x, met"]
    assert _row(text, "decoder, grid of 81 prompts vs a loop of 81 single decodes, vit_h dims")[3] == "0.05x"
    assert _row(text, "training step s / iter, vit_b, float16 cache vs online encoding")[3:5] == ["0.25x",
                                                                                                 "<= 0.2x, missed"]
    assert _row(text, "cache bytes per slice, vit_b, float16")[1:4] == ["100 B", "400 B (official float32)", "0.25x"]
    assert _row(text, "cache bytes per slice, vit_b, int8")[3] == "0.15x"
    assert _row(text, "encoder ms / slice, tiny at 256 px")[3] == "0.01x"
    assert _row(text, "pseudo Dice anterior, int8 vs float16 cache")[3] == "0.5x"
    assert _row(text, "s / volume in-process, tiny (256 px), grid 81 vs box")[3:5] == ["2x", "<= 2x, met"]
    assert _row(text, "whole command wall time, `desam_predict` tiny grid, 2 volume(s)")[3] == "3x"
    assert _row(text, "prediction, `desam_predict` tiny box, 2 volume(s), process tree")[3] == "0.5x"
    # medsam_lite's s / volume against 3x the nnU-Net figure (80 s for 60 volumes)
    goal = "vs nnU-Net 2D's 1.33 s (the issue's figure, mirroring on)"
    assert _row(text, f"s / volume in-process, medsam_lite (128 px) grid, {goal}")[3:5] == ["10x", "<= 3x, missed"]
    assert _row(text, f"s / volume in-process, medsam_lite (128 px) box, {goal}")[3:5] == ["3x", "<= 3x, met"]
    assert _row(text, "encoder ms / tile, medsam_lite (128 px), 32 tiles per call vs 1")[1:4] == [
        "60 ms", "300 ms (1 per call)", "0.2x"]
    # encoder levers: each against the baseline of its batch, the batch against one tile, which pay
    assert _row(text, "encoder ms / tile, medsam_lite 128 px, 32 tiles per call vs 1")[1:4] == [
        "50 ms", "200 ms (1 per call)", "0.25x"]
    assert _row(text, "encoder ms / tile, medsam_lite 128 px, int8, batch 1")[1:4] == [
        "100 ms", "200 ms (baseline)", "0.5x"]
    assert _row(text, "encoder ms / tile, medsam_lite 128 px, threads1, batch 32")[3] == "1.8x"
    assert ("At 1 tile(s) per call (a CPU's choice, below), channels_last, int8 take at least 10% off the baseline; "
            "int8 changes the features (last column) and count only once hippocampus Dice moves by less than "
            "0.002.") in text
    assert _row(text, "int8 | 1")[2:4] == ["100 ms", "0.03"]
    # the batch scaling, in batch order, and the fastest
    assert [_row(text, f"{b} | {ms}")[2] for b, ms in ((1, "200 ms"), (2, "220 ms"), (32, "400 ms"))] == [
        "1.00x", "1.10x", "2.00x"]
    assert "Fastest per tile: 1 per call." in text
    assert _row(text, "CPU s, grid decode of 81 prompts, medsam_lite at 128 px (1024 image tokens)")[1:4] == [
        "1.5 s", "2 s (SAM's Attention)", "0.75x"]
    assert _row(text, "wall s per tile, grid call with PRIM over 9 prompts at a time, medsam_lite at 128 px "
                      "(max abs diff 2e-07)")[1:4] == ["0.8 s", "1 s (81 per call)", "0.8x"]
    ct = _row(text, "peak RSS of `desam_predict`, process tree, CT 512 x 512 x 300")
    assert ct[1].startswith("3072 MiB") and ct[4] == "<= 6 GB, met"
    assert _row(text, "mean Dice, box per slice, 128 px vs 256 px (the 8 volumes both have)")[3] == "0.5x"
    assert _row(text, "s / volume, 128 px vs 256 px")[3] == "0.25x"
    # fold ensembles: bytes, one fold against five, before and after, and the goal
    assert _row(text, "before")[1:8] == ["3,600 MiB", "40 s", "200 s", "5x", "1,024 MiB", "4,096 MiB"]
    assert _row(text, "after")[1:8] == ["400 MiB", "40 s", "50 s", "1.25x", "1,024 MiB", "1,100 MiB"]
    assert "now takes 1.25x one fold's time (goal: at most 1.5x): met" in text
    # the Dice race: one line per budget, both tools side by side, the LiteMedSAM reference (same 8 volumes)
    line = _row(text, "30 min")
    assert line[1:5] == ["40 (8 val.)", "0.600 / 0.600 / 0.600", "250 (1 x 250)", "6 s"]
    assert line[5:10] == ["default (medsam_lite 128 px)", "0.300 / 0.300 / 0.300", "1500 (30 x 50)", "6 s", "0.5x"]
    assert "0.400 at 128 px, 0.800 at 256 px on the same validation volumes" in text
    # robustness: drops per level and the weighted summary per model, which degrades less (mean drop), the plot
    assert _row(text, "blur")[1:6] == ["+0.000 / +0.100 / +0.200", "0.650", "+0.000 / +0.200 / +0.400", "0.700",
                                       "partly: Gaussian blur, sigma 0.5-1 voxel"]
    assert "**nnunet_2d degrades less overall** (mean drop over all shifts and levels 0.150 against 0.200)" in text
    assert "desam degrades less under blur; nnunet_2d under motion." in text
    assert "Mean Dice (classes\n1 and 2) on the clean volumes: desam 0.700, nnunet_2d 0.800" in text
    assert "![Dice against severity, one panel per shift](benchmarks/results/robustness.png)" in text
    assert "10 minutes in all;" in text
    import report_robustness
    assert report_robustness._timing({"seconds": 600.0, "predictions_done_before": 4}).startswith(
        "10 minutes in its last invocation (4 model x set predictions were done by an earlier")
    # a GPU section adds a GPU column named after the device, to that area's table only
    assert "| measure | ours | reference | ratio | target | command | GPU (Fake GPU 9000) |" in text
    assert _row(text, "decoder, grid of 81 prompts vs 1 prompt, vit_h dims")[6] == "30 ms vs 10 ms (1 prompt) (3x)"
    assert "GPU figures: Fake GPU 9000 (decoder, gpu_check); every other figure is from the CPU." in text
    assert "16 CPU cores" not in text  # the GPU machine's CPU is not one of the CPU figures' machines
    assert _row(text, "desam | vit_b | 1024 | Fake GPU 9000")[4:] == [
        "0.0500 s", "0.250 s (batch 8)", "0.0600 s / 0.2000 s / -", "3000 MiB / 9000 MiB / 2500 MiB / 4000 MiB / -",
        "`python benchmarks/gpu_check.py`"]
    assert _row(text, "dapsam | medsam_lite | 128")[4:] == [
        "-", "0.100 s (batch 8)", "- / - / 0.0200 s", "- / 2000 MiB / - / - / 190 MiB", "`python benchmarks/gpu_check.py`"]
    assert _row(text, "desam | vit_b | 1024 | box")[4:] == ["32", "0.0600 s", "0.3000 s", "5.00x", "2500 MiB / 900 MiB"]
    assert "desam | vit_b | 1024 | grid" not in text  # measured batched only: no comparison row
    assert "torch 2.11.0+cu130, CUDA 13.0." in text and "4 passed (`python -m pytest -k cuda`)" in text
    # the inexact prediction options against the exact decode: #22's Dice rule, the speed-up
    assert _row(text, "mean Dice, --bf16, chosen (box), 40 volumes")[1:6] == [
        "0.6450", "0.6500 (exact)", "0.992x", "change within 0.002, missed",
        "`python benchmarks/prediction_options.py --options bf16 --cases 40`"]
    assert _row(text, "s / volume, --bf16, chosen (box), 40 volumes")[1:4] == ["6 s", "12 s (exact)", "0.5x"]
    assert _row(text, "mean Dice, --coarse-grid, grid IoU >= -1, top-1, 10 volumes")[4] == "change within 0.002, met"
    assert _row(text, "--coarse-grid | grid IoU >= -1, top-1")[3:8] == [
        "10", "0.7000 -> 0.7000", "0.6000 -> 0.5990", "-0.0005", "1.50x"]
    # the allocator: kept against glibc's default, per mode, with the page faults behind it
    assert _row(text, "s / volume, grid mode, DeSAM, 120-minute race, 5 volumes")[1:6] == [
        "20 s", "30 s (glibc default)", "0.667x", "-", "`python benchmarks/allocator.py --cases 5`"]
    assert _row(text, "peak RSS, grid mode, DeSAM, 120-minute race, 5 volumes")[3] == "1.05x"
    assert _row(text, "grid | DeSAM, 120-minute race | glibc default")[3:8] == [
        "30 s", "30, 31", "4,900,000", "1600 MiB", "0.7000"]
    assert _row(text, "DeSAM-medsam_lite, trained")[1:5] == ["0.800", "0.700", "0.750", "12 s"]
    assert _row(text, "LiteMedSAM, no training")[3] == "0.550" and "100 s per slice (1 slice(s), 2 threads" in text


def test_missing_results_render_as_not_measured_yet(tmp_path):
    files = {k: v for k, v in FABRICATED.items() if k not in ("decoder.json", "litemedsam_box.json")}
    text = _render(tmp_path, files)
    assert f"not measured yet: `{run_all.BY_NAME['decoder'].command()}`" in text
    assert f"not measured yet: `{run_all.BY_NAME['litemedsam_box'].command()}`" in text
    assert "reference: LiteMedSAM" not in text  # no reference row without its results
    empty = _render(tmp_path / "empty", {})
    assert empty.count("not measured yet") >= len(run_all.BY_NAME)
    assert "could not render" not in empty


def test_runs_of_several_invocations_build_one_table(tmp_path):
    """Two predict.py invocations measuring different things both show; the earlier race's rows do not."""
    earlier = {"desam": {"wall_s_train_and_validation": 60.0, "epochs": 1, "dice": {"mean": 0.2, "cases": 40}},
               "nnunet": {"wall_s_train_and_validation": 60.0, "epochs": 1, "dice": {"mean": 0.8, "cases": 40}}}
    results = _write(tmp_path / "results", dict(FABRICATED, **{"dice_budget.json": {"earlier": earlier}}))
    predict = [{"measured": {"a": _predict_run()}, "args": ["a"], "date": "2026-01-01"},
               {"measured": {"b": dict(_predict_run(), command="python b")}, "args": ["b"], "date": "2026-01-02"}]
    (results / "predict.json").write_text(json.dumps({"runs": predict}))
    out = tmp_path / "B.md"
    assert run_all.main(["--render-only", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"not measured yet: `{run_all.BY_NAME['dice_budget'].command()}`" in text
    assert "also holds 2 row(s) of an earlier format" in text
    assert text.count("| s / volume in-process, tiny (256 px), grid 81 vs box |") == 2
    assert "`python b`" in text


def test_written_atomically(tmp_path, monkeypatch):
    text = _render(tmp_path, FABRICATED)
    assert sorted(p.name for p in (tmp_path / "doc").iterdir()) == ["BENCHMARKS.md"]
    # a write that fails leaves the previous document and no temporary file
    out = tmp_path / "doc" / "BENCHMARKS.md"

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError):
        run_all.main(["--render-only", "--results", str(tmp_path / "results"), "--out", str(out)])
    monkeypatch.undo()
    assert out.read_text() == text
    assert sorted(p.name for p in out.parent.iterdir()) == ["BENCHMARKS.md"]


def test_only_unknown_name_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_all.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "decoder", "nope", "--results", str(tmp_path), "--out", str(tmp_path / "B.md")])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "unknown benchmark(s) for --only: nope" in err and "decoder" in err
    assert not (tmp_path / "B.md").exists()


def test_only_runs_the_named_benchmarks_then_renders(tmp_path, monkeypatch):
    calls = []

    class Done:
        returncode = 0

    def fake_run(argv, cwd=None, **kw):
        calls.append((argv, cwd))
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(json.dumps({"runs": [FABRICATED[out.name]]}))
        return Done()

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    out = tmp_path / "B.md"
    assert run_all.main(["--only", "decoder", "--quick", "--results", str(tmp_path / "r"), "--out", str(out)]) == 0
    assert len(calls) == 1
    argv, cwd = calls[0]
    assert argv[:2] == [sys.executable, "benchmarks/decoder.py"] and cwd == run_all.REPO
    assert argv[2:-2] == list(run_all.BY_NAME["decoder"].quick)
    assert "decoder, grid of 81 prompts vs 1 prompt, vit_h dims" in out.read_text()


def test_renders_the_repository_results(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    assert run_all.main(["--render-only", "--out", str(out)]) == 0
    text = out.read_text()
    assert "could not render" not in text
    for title, *_ in run_all.SECTIONS:
        assert f"## {title}" in text


def test_dice_race_details_show_the_schedule_the_budget_and_the_choice(tmp_path):
    fb = {"seconds": 60.0, "label": "grid iou>=0.05 top-1"}
    desam = _desam_race_row(0.625, train_wall_s=1750.0, find_best=fb, find_best_s=60.0,
                            postprocessing=["remove_all_but_largest_component_from_segmentation"],
                            budget_spent="Budget spent: 1790 s of 1800 s: setup (data, cache) 40 s",
                            dice_final_validation={"1": 0.6, "2": 0.6, "mean": 0.6, "cases": 8})
    dapsam = dict(_desam_race_row(0.5, train_wall_s=1700.0, find_best_s=None, dice_final_validation=None,
                                  options={"num_iterations_per_epoch": 50, "use_cache": False, "time_budget": 1800.0}),
                  tool="dapsam", iterations=1480)  # its 30th epoch shortened to 30 iterations
    rows = {"nnunet_2d_30min_40cases": _dice_row("nnunet", 0.25, trainer="nnUNetTrainer_1epoch", planned_epochs=1),
            "desam_30min_40cases": desam, "dapsam_30min_40cases": dapsam}
    text = _render(tmp_path, dict(FABRICATED, **{"dice_budget.json": {"rows": rows}}))
    assert "| SAM model (DeSAM unless named) |" in text
    race = [ln for ln in text.splitlines() if ln.startswith("| 30 min |")]
    assert [c.strip() for c in race[0].split("|")[6:7] + race[1].split("|")[6:7]] == [
        "default (medsam_lite 128 px)", "DAPSAM default (medsam_lite 128 px)"]  # DeSAM first, then DAPSAM
    assert [race[0].split("|")[8].strip(), race[1].split("|")[8].strip()] == ["1500 (30 x 50)", "1480 (29 x 50 + 30)"]
    import dice_budget  # the race counts the iterations the trainer's budget line counts
    assert dice_budget.budget_iterations("Budget spent: 220 s of 230 s: ...; 22 iterations, 10.00 s each") == 22
    assert dice_budget.budget_iterations(None) is None
    assert _row(text, "30 min")[9] == "2.5x"  # DeSAM's mean after its choice against nnU-Net's
    assert race[1].split("|")[10].strip() == "2x"
    details = _row(text, "DAPSAM default (medsam_lite 128 px)")
    assert details[2] == "epochs until the budget, 50 it each, prompt-free, online encoding"
    assert details[6] == "nothing to choose (prompt-free, no postprocessing)"  # a row raced before the choice
    import report_dice_budget
    chosen = dict(dapsam, find_best={"label": "prompt-free", "prompts": None}, find_best_s=5.0,
                  postprocessing=["remove_all_but_largest_component_from_segmentation"])
    assert report_dice_budget._choice(chosen) == "prompt-free, largest component (5 s)"
    details = _row(text, "DeSAM default (medsam_lite 128 px)")
    assert details[2] == "epochs until the budget, 50 it each, mixed prompts, online encoding"
    assert details[3] == "29.2 min (97%)"
    assert details[6:9] == ["prompts grid iou>=0.05 top-1, largest component (60 s)", "0.600 -> 0.625",
                            "Budget spent: 1790 s of 1800 s: setup (data, cache) 40 s"]
    assert _row(text, "nnU-Net 2D")[2] == "`nnUNetTrainer_1epoch`: 1 epoch(s) x 250 it"
    assert "no model segments anything yet" not in text


def test_the_gpu_check_is_skipped_without_a_gpu_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all.shutil, "which", lambda name: None)
    monkeypatch.setattr(run_all.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    out = tmp_path / "B.md"
    assert run_all.main(["--only", "gpu_check", "--results", str(tmp_path / "r"), "--out", str(out)]) == 0
    assert "gpu_check: skipped, it needs a CUDA device" in capsys.readouterr().out
    assert f"not measured yet: `{run_all.BY_NAME['gpu_check'].command()}`" in out.read_text()
    assert "No GPU machine has been lent" in out.read_text()


def test_dice_curve_counts_the_cache_build_in_the_budget():
    import report_dice_budget
    online = _desam_race_row(0.7, setup_s=12.0, train_wall_s=1788.0)
    cached = _desam_race_row(0.8, minutes=120.0, setup_s=2640.0, train_wall_s=4560.0)
    lines = report_dice_budget.curve_points({"desam_30min": online, "desam_120min": cached,
                                             "nnunet_2d_30min": _dice_row("nnunet", 0.75, trainer="t1"),
                                             "desam_8cases": _desam_race_row(0.9, cases=8)})
    assert len(lines) == 2  # the 8-case row is not on the 40-case curve
    desam = next(v for k, v in lines.items() if "nnU-Net" not in k)
    assert desam == {30.0: [(30.0, 0.7)], 120.0: [(120.0, 0.8)]}
    assert [p for runs in lines["nnU-Net 2D"].values() for p in runs] == [(1510.0 / 60, 0.75)]


def test_dice_against_training_time_plot(tmp_path):
    import report_dice_budget
    results = _write(tmp_path / "results", FABRICATED)
    assert report_dice_budget.plot_curve({}, results / "dice_budget.png") is None
    png = report_dice_budget.plot_curve(FABRICATED["dice_budget.json"]["rows"], results / "dice_budget.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "BENCHMARKS.md"
    assert run_all.main(["--render-only", "--results", str(results), "--out", str(out)]) == 0
    assert "![Mean Dice against training wall time, one line per tool](benchmarks/results/dice_budget.png)" in \
        out.read_text()
