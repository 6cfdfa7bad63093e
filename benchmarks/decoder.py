"""Decoder cost of DeSAM's automatic (grid) mode: decode_grid vs. a loop of single-prompt decodes.

The official automatic mode runs the whole mask decoder (PRIM + PDMM, context branches included)
for every grid point; our decode_grid runs PRIM batched over all points, PDMM's image-only
context branches once, and PDMM's per-prompt path only for the top_k kept prompts.

Only the decoder is timed: features of the right shapes (from the backbone's encoder, found on the
meta device) are random, weights random, at image_size 1024. ``iou_thresh`` is -inf so the top_k
PDMM paths always run (the worst case).

    python benchmarks/decoder.py                      # tiny, vit_b, vit_h; writes benchmarks/results/decoder.json
    python benchmarks/decoder.py --backbones tiny --repeats 1 --loop-prompts 3   # quick
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desam_nnu.model import build_desam, make_point_grid  # noqa: E402
from results_file import record_run  # noqa: E402


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best (minimum) wall time in ms over ``repeats`` runs, after one warm-up run. The minimum,
    not the median: on a shared CPU other processes only ever add time."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def feature_shapes(backbone: str, image_size: int) -> List[torch.Size]:
    with torch.device("meta"):
        model = build_desam(backbone, image_size=image_size)
        return [f.shape for f in model.encode(torch.empty(1, 3, image_size, image_size))]


def bench_backbone(backbone: str, args: argparse.Namespace, device: torch.device) -> Dict[str, object]:
    torch.manual_seed(0)
    shapes = feature_shapes(backbone, args.image_size)
    model = build_desam(backbone, image_size=args.image_size, with_image_encoder=False).to(device).eval()
    feats = [torch.randn(s, device=device) for s in shapes]
    grid = make_point_grid(args.grid, args.image_size, device=device)
    p = grid.shape[0]
    centre = grid[p // 2 : p // 2 + 1]
    loop_n = min(args.loop_prompts, p)
    row: Dict[str, object] = {
        "backbone": backbone,
        "pdmm_input_width": int(shapes[0][1]),
        "feature_shapes": ["x".join(str(n) for n in s) for s in shapes],
        "prompts": p,
        "top_k": args.top_k,
    }
    with torch.inference_mode():
        row["single_ms"] = timed(lambda: model.decode(feats, points=centre), args.repeats, device)
        row["grid_ms"] = timed(
            lambda: model.decode_grid(feats, grid, iou_thresh=float("-inf"), top_k=args.top_k), args.repeats, device
        )

        def prim_only() -> None:
            sparse, dense = model.embed_prompts(grid)
            model.prim(feats[-1], model.prompt_encoder.get_dense_pe(), sparse, dense)

        row["grid_prim_ms"] = timed(prim_only, args.repeats, device)

        def loop() -> None:
            for i in range(loop_n):
                model.decode(feats, points=grid[i : i + 1])

        row["loop_ms"] = timed(loop, max(1, args.repeats // 2), device) * p / loop_n
        row["loop_measured_prompts"] = loop_n
        if args.batched_all:
            row["batched_all_ms"] = timed(lambda: model.decode(feats, points=grid), max(1, args.repeats // 2), device)
    row["grid_over_single"] = row["grid_ms"] / row["single_ms"]
    row["loop_over_grid"] = row["loop_ms"] / row["grid_ms"]
    return row


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["tiny", "vit_b", "vit_h"])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best of)")
    ap.add_argument("--grid", type=int, default=9, help="points per side (official: 9 -> 81 prompts)")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--loop-prompts", type=int, default=9,
                    help="single decodes actually run for the loop figure, extrapolated to the grid size")
    ap.add_argument("--batched-all", action="store_true", help="also time decode() of all prompts' full masks")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "decoder.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = []
    for bb in args.backbones:
        rows.append(bench_backbone(bb, args, device))
        r = rows[-1]
        print(f"  {bb}: single {r['single_ms']:.1f} ms, grid {r['grid_ms']:.1f} ms", file=sys.stderr, flush=True)

    p = args.grid**2
    header = (f"| backbone | PDMM in | 1 prompt (ms) | grid {p} top{args.top_k} (ms) | grid / 1 prompt "
              f"| of which PRIM x{p} (ms) | loop {p} x 1 prompt (ms) | loop / grid |")
    if args.batched_all:
        header += f" decode {p} full masks (ms) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        line = (f"| {r['backbone']} | {r['pdmm_input_width']} | {r['single_ms']:.1f} | {r['grid_ms']:.1f} "
                f"| {r['grid_over_single']:.2f}x | {r['grid_prim_ms']:.1f} | {r['loop_ms']:.0f}"
                f"{'*' if r['loop_measured_prompts'] < p else ''} | {r['loop_over_grid']:.1f}x |")
        if args.batched_all:
            line += f" {r['batched_all_ms']:.0f} |"
        print(line)
    if any(r["loop_measured_prompts"] < p for r in rows):
        print(f"* extrapolated from {min(args.loop_prompts, p)} measured single decodes")

    meta = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "image_size": args.image_size,
        "grid_points": p,
        "top_k": args.top_k,
        "repeats": args.repeats,
        "iou_thresh": "-inf (worst case: top_k PDMM paths always run)",
    }
    record_run(args.out, {"meta": meta, "results": rows}, "decoder.py", argv)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
