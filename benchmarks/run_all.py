"""Run every benchmark, one after another, and write BENCHMARKS.md from their JSON results.

Each benchmark script writes its JSON to benchmarks/results/ (see BENCHMARKS below for the commands);
this script runs them with the same Python interpreter and renders one section per area: a table of
what was measured, our figure, the reference figure measured in the same run, the ratio ours /
reference, the target and the command that reproduces it, then the details worth keeping and notes.
A JSON that is missing renders as "not measured yet" with its command. A JSON with a ``gpu`` section
(the same layout, measured on a GPU, with ``device`` naming it) adds a GPU column to the area's table.

    python benchmarks/run_all.py                      # everything (hours on a 2-core CPU), then BENCHMARKS.md
    python benchmarks/run_all.py --only decoder train # a subset, then BENCHMARKS.md from all results present
    python benchmarks/run_all.py --render-only        # run nothing, BENCHMARKS.md from the results present
    python benchmarks/run_all.py --quick              # small settings, into benchmarks/results/quick/
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report_* modules beside this script
from report import BY_NAME, OUT, REPO, RESULTS, Results  # noqa: E402
from report_plan_preprocess import section_preprocess  # noqa: E402
from report_decoder import section_decoder  # noqa: E402
from report_prim_attention import section_prim_attention  # noqa: E402
from report_train import section_cache_bytes, section_train  # noqa: E402
from report_encoder import section_encoder  # noqa: E402
from report_cache_dice import section_cache_dice  # noqa: E402
from report_predict import section_predict  # noqa: E402
from report_memory import section_memory  # noqa: E402
from report_litemedsam_box import section_lite  # noqa: E402
from report_dice_budget import section_dice  # noqa: E402
from report_gpu_check import section_gpu  # noqa: E402
from report_header import header  # noqa: E402
from report_robustness import section_robustness  # noqa: E402
from report_ensemble import section_ensemble  # noqa: E402
from report_prompted_boxes import section_prompted  # noqa: E402
from report_encoder_levers import section_encoder_levers  # noqa: E402
from report_prediction_options import section_prediction_options  # noqa: E402
from report_allocator import section_allocator  # noqa: E402

sys.path.insert(0, str(REPO))
from desam_nnu.atomic import atomic_path  # noqa: E402  (a plain-Python module: no torch import)


# ------------------------------------------------------------------------------------------ document
SECTIONS: List[Tuple[str, str, Tuple[str, ...], Callable[[Results], str]]] = [
    ("Plan and preprocess against nnU-Net", "plan_preprocess.py", ("plan_preprocess",), section_preprocess),
    ("Decoder: DeSAM's 9 x 9 grid against a loop of single prompts", "decoder.py", ("decoder",), section_decoder),
    ("PRIM's attention against segment_anything's", "prim_attention.py", ("prim_attention",),
     section_prim_attention),
    ("Training step: embedding cache against online encoding", "train.py", ("train",), section_train),
    ("Cache bytes per slice against the official float32 layout", "train.py", ("train",), section_cache_bytes),
    ("Encoder cost per slice", "encoder.py", ("encoder",), section_encoder),
    ("Encoder levers at prediction: batch, threads, channels-last, compile, bf16, int8", "encoder_levers.py",
     ("encoder_levers",), section_encoder_levers),
    ("Cache precision: int8 against float16", "cache_dice.py", ("cache_dice",), section_cache_dice),
    ("Prediction: grid against box, against nnU-Net's 2D predictor, CT memory", "predict.py", ("predict",),
     section_predict),
    ("Prediction options: --bf16, --coarse-grid and the ONNX Runtime encoder", "prediction_options.py",
     ("prediction_options",), section_prediction_options),
    ("The allocator: glibc's malloc keeping freed memory in CPU prediction", "allocator.py", ("allocator",),
     section_allocator),
    ("Fold ensembles of a ViT-B model: model-folder bytes, time and memory", "ensemble.py", ("ensemble",),
     section_ensemble),
    ("Peak memory", "plan_preprocess.py, train.py, predict.py", ("plan_preprocess", "train", "predict"),
     section_memory),
    ("LiteMedSAM with a box per slice from the ground truth (no training)", "litemedsam_box.py", ("litemedsam_box",),
     section_lite),
    ("Hippocampus fold-0 validation Dice after the same wall-clock training budget: DeSAM against nnU-Net's 2D U-Net",
     "dice_budget.py", ("dice_budget",), section_dice),
    ("Prompted accuracy: a simulated user's boxes, DeSAM and DB-SAM against LiteMedSAM", "prompted_boxes.py",
     ("prompted_boxes",), section_prompted),
    ("Robustness under simulated scanner shifts: DeSAM against nnU-Net's 2D U-Net, the race's models", "robustness.py",
     ("robustness",), section_robustness),
    ("GPU: the CUDA path, timed", "gpu_check.py", ("gpu_check",), section_gpu),
]


def render(res: Results) -> Tuple[str, Dict[str, str]]:
    """The document and, per section title, "rendered", "not measured yet" or "error: ..."."""
    parts, status = [header(res)], {}
    for title, scripts, names, fn in SECTIONS:
        script_text = ", ".join(f"`benchmarks/{s.strip()}`" for s in scripts.split(","))
        try:
            body = fn(res)
            status[title] = "not measured yet" if body.startswith("not measured yet") else "rendered"
        except Exception as e:  # a result of an unexpected layout: say so in its section, keep the rest
            body = f"could not render {', '.join(BY_NAME[n].json for n in names)}: {type(e).__name__}: {e}"
            status[title] = f"error: {type(e).__name__}: {e}"
        parts.append(f"## {title} ({script_text})\n\n{body.strip()}")
    return "\n\n".join(parts) + "\n", status


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_text(text)


# ------------------------------------------------------------------------------------------ main
def run_benchmarks(names: List[str], quick: bool, results: Path) -> Dict[str, Tuple[int, float]]:
    done: Dict[str, Tuple[int, float]] = {}
    results.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names, 1):
        b = BY_NAME[name]
        if b.needs_gpu and not quick and shutil.which("nvidia-smi") is None:
            print(f"[{k}/{len(names)}] {name}: skipped, it needs a CUDA device (no nvidia-smi here)", flush=True)
            continue
        print(f"[{k}/{len(names)}] {name}: {b.command(quick)}", flush=True)
        start, rc = time.perf_counter(), 0
        for args in b.all_argv(quick):
            rc = rc or subprocess.run([sys.executable, *args, "--out", str(results / b.json)], cwd=REPO).returncode
        done[name] = (rc, time.perf_counter() - start)
        print(f"[{k}/{len(names)}] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {done[name][1]:.0f} s",
              flush=True)
    return done


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="benchmarks: " + ", ".join(BY_NAME))
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (then render all results)")
    p.add_argument("--quick", action="store_true",
                   help="small settings; results and document go to benchmarks/results/quick/ unless --results/--out")
    p.add_argument("--render-only", action="store_true", help="run nothing; render from the results present")
    p.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=None, help="document to write (default BENCHMARKS.md)")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in BY_NAME]
    if unknown:
        p.error(f"unknown benchmark(s) for --only: {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    out = args.out or (results / "BENCHMARKS.md" if args.quick and args.results is None else OUT)

    ran: Dict[str, Tuple[int, float]] = {}
    if not args.render_only:
        ran = run_benchmarks(args.only or list(BY_NAME), args.quick, results)

    res = Results(results)
    text, status = render(res)
    write_atomic(out, text)

    print("\nsummary:")
    for name, (rc, seconds) in ran.items():
        print(f"  ran {name:16s} {'ok' if rc == 0 else f'FAILED (exit {rc})'}, {seconds:.0f} s")
    for title, s in status.items():
        print(f"  {s:17s} {title}" if not s.startswith("error") else f"  {title}: {s}")
    for problem in res.problems:
        print(f"  {problem}")
    print(f"wrote {out}")
    failed = [n for n, (rc, _) in ran.items() if rc != 0]
    errors = [t for t, s in status.items() if s.startswith("error")]
    return 1 if failed or errors or res.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
