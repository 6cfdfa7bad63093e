"""Image-encoder cost per slice: LiteMedSAM's TinyViT (medsam_lite) at 128/192/256 px vs. SAM ViT-B.

Times ``DeSAM.encode`` (pixel normalisation + the frozen image encoder, what building the feature
cache or online training runs per slice) for batch 1 on the CPU, best of N after one warm-up run.
The runs are interleaved (one run of every configuration per round), so that load from other
processes on a shared machine spreads over all configurations alike and the ratios stay fair.
Weights are random (timing does not depend on them; medsam_lite is built with pretrained=False),
so nothing is read from disk. Also reports what one cached slice holds (all encoder outputs,
fp16) and the mask-logit size PDMM produces at that input size.

    python benchmarks/encoder.py                       # writes benchmarks/results/encoder.json
    python benchmarks/encoder.py --configs medsam_lite:128 tiny:256 --repeats 1   # quick
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desam_nnu.model import build_desam  # noqa: E402
from results_file import record_run  # noqa: E402

DEFAULT_CONFIGS = ["medsam_lite:128", "medsam_lite:192", "medsam_lite:256", "tiny:256", "vit_b:1024"]


def run_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def parse_config(text: str) -> Tuple[str, int]:
    backbone, _, size = text.partition(":")
    if not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected BACKBONE:SIZE, e.g. medsam_lite:256, got {text!r}")
    return backbone, int(size)


def setup(backbone: str, image_size: int) -> Tuple[Callable[[], object], Dict[str, object]]:
    """The encode call to time, and the row describing it (shapes from one warm-up run)."""
    torch.manual_seed(0)
    kw = {"pretrained": False} if backbone == "medsam_lite" else {}
    model = build_desam(backbone, image_size=image_size, **kw).eval()
    images = torch.rand(1, 3, image_size, image_size) * 255
    with torch.inference_mode():
        shapes = [tuple(f.shape[1:]) for f in model.encode(images)]  # also the warm-up run

    def encode() -> None:
        with torch.inference_mode():
            model.encode(images)

    return encode, {
        "backbone": backbone,
        "image_size": image_size,
        "encoder_params_m": round(sum(p.numel() for p in model.image_encoder.parameters()) / 1e6, 2),
        "feature_shapes": ["x".join(str(n) for n in s) for s in shapes],
        "cache_mib_per_slice_fp16": round(sum(2 * c * h * w for c, h, w in shapes) / 2**20, 2),
        "mask_logits": "x".join(str(n) for n in model.mask_size()),
    }


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", type=parse_config, default=[parse_config(c) for c in DEFAULT_CONFIGS],
                    metavar="BACKBONE:SIZE", help=f"default: {' '.join(DEFAULT_CONFIGS)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (best of)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "encoder.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fns, rows = zip(*(setup(backbone, size) for backbone, size in args.configs))
    runs: List[List[float]] = [[] for _ in rows]
    for r in range(args.repeats):
        for fn, row, times in zip(fns, rows, runs):
            times.append(run_ms(fn))
            print(f"  round {r + 1}: {row['backbone']}@{row['image_size']} {times[-1]:.1f} ms", file=sys.stderr, flush=True)
    for row, times in zip(rows, runs):
        row["ms_per_slice"] = round(min(times), 1)  # the minimum: other processes only ever add time
        row["runs_ms"] = [round(t, 1) for t in times]

    ref = next((r for r in rows if r["backbone"] == "vit_b"), None)
    header = "| backbone | input | encoder params (M) | ms / slice | vs vit_b@1024 | cache / slice fp16 (MiB) | mask logits |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        rel = f"{ref['ms_per_slice'] / r['ms_per_slice']:.1f}x faster" if ref and r is not ref else "-"
        print(f"| {r['backbone']} | {r['image_size']} | {r['encoder_params_m']} | {r['ms_per_slice']:.0f} | {rel} "
              f"| {r['cache_mib_per_slice_fp16']} | {r['mask_logits']} |")

    meta = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "batch": 1,
        "repeats": args.repeats,
        "timed": "DeSAM.encode (normalisation + image encoder), torch.inference_mode, random weights, "
                 "best of the interleaved runs after one warm-up",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    record_run(args.out, {"meta": meta, "results": list(rows)}, "encoder.py", argv)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
