"""Benchmark: PRIM's attention (``PromptAttention``) against segment_anything's ``Attention``.

The same DeSAM, switched between the two attention classes (same weights; only ``forward``
differs), in interleaved rounds, best CPU time (``time.process_time``: the process's own CPU time,
so other load on a shared machine matters little) of:

- ``grid``: ``decode_grid`` of one image over the official 9 x 9 = 81 points, ``iou_thresh`` -inf
  (PDMM runs for the best prompt: the worst case), what grid-mode prediction runs per tile;
- ``train``: one training decode (batch 8, one point per slice, features given) with its backward,
  what a cached training step runs;
- ``prim train``: PRIM alone in that step (forward + backward);
- ``chunks``: the predictor's grid call (``grid_candidates``, PromptAttention) with PRIM over at most N of the 81
  prompts at a time, wall seconds at ``--sweep-threads`` threads (the predictor's setting: all cores), with the
  largest difference from all prompts at once: the measurement behind ``CPU_GRID_PROMPTS_PER_CALL``
  (``inference/tiles.py``).

Random weights (the timing does not depend on them), random features of the encoder's shapes. glibc's malloc keeps
freed memory, as in ``DeSAMPredictor`` on a CPU (``desam_nnu/allocator.py``; ``DESAM_MALLOC=default``: glibc's own
settings, under which the 85 MB image side of 81 prompts is page-faulted anew on every call).

    python benchmarks/prim_attention.py [--configs medsam_lite:128 tiny:256] [--rounds 3] [--threads 1]
                                        [--chunks 81 27 9 3] [--sweep-threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from segment_anything.modeling.transformer import Attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desam_nnu.allocator import retain_freed_memory  # noqa: E402
from desam_nnu.model import DeSAM, build_desam, make_point_grid  # noqa: E402
from desam_nnu.model.attention import PromptAttention  # noqa: E402
from results_file import record_run  # noqa: E402

HERE = Path(__file__).resolve().parent
CLASSES = {"sam": Attention, "ours": PromptAttention}


def _use(model: DeSAM, cls: type) -> None:
    for m in model.prim.modules():
        if isinstance(m, Attention):
            m.__class__ = cls


def _cpu_seconds(fn: Callable[[], object]) -> float:
    fn()  # warm-up
    start = time.process_time()
    fn()
    return time.process_time() - start


def _wall_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def chunk_sweep(model: DeSAM, one: Sequence[torch.Tensor], grid: torch.Tensor, chunks: Sequence[int], rounds: int,
                threads: int) -> List[dict]:
    """Best wall seconds of the predictor's grid call per prompts-per-call setting (interleaved rounds), and the
    largest difference of its IoUs and masks from all prompts in one call."""
    _use(model, PromptAttention)
    model.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    def call(chunk: int):
        with torch.no_grad():
            return model.grid_candidates(one, grid, top_k=1, iou_thresh=float("-inf"), prompts_per_batch=chunk)

    try:
        reference = call(grid.shape[0])
        for chunk in chunks:  # warm-up
            call(chunk)
        best: Dict[int, float] = {}
        for _ in range(rounds):
            for chunk in chunks:
                best[chunk] = min(best.get(chunk, float("inf")), _wall_seconds(lambda: call(chunk)))
        rows = []
        for chunk in chunks:
            out = call(chunk)
            diff = max(float((out.prompt_iou - reference.prompt_iou).abs().max()),
                       float((out.logits - reference.logits).abs().max()))
            rows.append({"prompts_per_call": chunk, "wall_s": best[chunk], "max_abs_diff": diff})
        return rows
    finally:
        torch.set_num_threads(before)


def measure(backbone: str, size: int, rounds: int, chunks: Sequence[int] = (), sweep_threads: int = 1) -> dict:
    torch.manual_seed(0)
    model = build_desam(backbone, image_size=size, num_classes=2, pretrained=False)
    with torch.no_grad():
        one = model.encode(torch.rand(1, 3, size, size) * 255)
        batch = model.encode(torch.rand(8, 3, size, size) * 255)
    grid = make_point_grid(9, size)
    points = (torch.rand(8, 1, 2) * size, torch.ones(8, 1, dtype=torch.long))
    model.set_trainable()

    def grid_decode():
        model.eval()
        with torch.no_grad():
            return model.decode_grid(one, grid, iou_thresh=float("-inf"))

    def train_decode():
        model.train()
        logits, iou = model.decode(batch, points=points)
        logits = logits[0] if isinstance(logits, list) else logits
        (logits.square().mean() + iou.sum()).backward()

    def prim_train():
        model.train()
        sparse, dense = model.embed_prompts(points, None)
        embedding, iou = model.prim(batch[-1], model.prompt_encoder.get_dense_pe(), sparse, dense)
        (embedding.square().mean() + iou.sum()).backward()

    jobs = {"grid": grid_decode, "train": train_decode, "prim train": prim_train}
    best: Dict[str, Dict[str, float]] = {name: {} for name in CLASSES}
    for _ in range(rounds):
        for name, cls in CLASSES.items():
            _use(model, cls)
            for job, fn in jobs.items():
                best[name][job] = min(best[name].get(job, float("inf")), _cpu_seconds(fn))
    outputs = {}
    for name, cls in CLASSES.items():
        _use(model, cls)
        r = grid_decode()
        outputs[name] = (r.prompt_iou, r.mask_logits)
    diff = max(float((a - b).abs().max()) for a, b in zip(outputs["sam"], outputs["ours"]))
    sweep = chunk_sweep(model, one, grid, chunks, rounds, sweep_threads) if chunks else []
    return {"backbone": backbone, "image_size": size, "neck_tokens": int(one[-1].shape[-2] * one[-1].shape[-1]),
            "cpu_s": best, "ratio": {job: best["ours"][job] / best["sam"][job] for job in jobs},
            "grid_max_abs_diff": diff, "chunks": sweep}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["medsam_lite:128", "tiny:256"], help="BACKBONE:IMAGE_SIZE")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunks", nargs="*", type=int, default=[81, 27, 9, 3],
                   help="prompts per PRIM call in the grid sweep (none: no sweep)")
    p.add_argument("--sweep-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads for the sweep (default: all cores, as the predictor runs)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "prim_attention.json")
    args = p.parse_args()
    malloc = "freed memory kept" if retain_freed_memory() else "glibc default"
    torch.set_num_threads(args.threads)
    results = []
    for config in args.configs:
        backbone, size = config.split(":")
        results.append(measure(backbone, int(size), args.rounds, args.chunks, args.sweep_threads))
        r = results[-1]
        print(f"{config}: " + ", ".join(f"{job} {r['cpu_s']['ours'][job]:.3f} / {r['cpu_s']['sam'][job]:.3f} s "
                                        f"({x:.2f}x)" for job, x in r["ratio"].items()), flush=True)
    print("\n| backbone | input | neck tokens | job | SAM's Attention | PromptAttention | ratio |\n|---|---|---|---|---|---|---|")
    for r in results:
        for job, x in r["ratio"].items():
            print(f"| {r['backbone']} | {r['image_size']} | {r['neck_tokens']} | {job} | {r['cpu_s']['sam'][job]:.3f} s "
                  f"| {r['cpu_s']['ours'][job]:.3f} s | {x:.2f}x |")
    if any(r["chunks"] for r in results):
        print(f"\n| backbone | input | prompts per PRIM call | wall s per tile ({args.sweep_threads} threads) "
              "| max abs diff |\n|---|---|---|---|---|")
        for r in results:
            for c in r["chunks"]:
                print(f"| {r['backbone']} | {r['image_size']} | {c['prompts_per_call']} | {c['wall_s']:.3f} "
                      f"| {c['max_abs_diff']:.1e} |")
    record_run(args.out, {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                          "sweep_threads": args.sweep_threads, "malloc": malloc,
                          "rounds": args.rounds, "results": results}, "prim_attention.py")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
