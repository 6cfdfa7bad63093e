"""Encoder levers on the CPU: which settings make the frozen image encoder fast at prediction time.

What is measured: ``DeSAM.encode`` (pixel normalisation + image encoder, the part of a tile's prediction
that dominates box mode) of the plans' default backbone (``medsam_lite`` at 128 px for hippocampus;
random weights, as timing does not depend on them) on random RGB tiles [B, 3, S, S], in milliseconds
per tile, for each lever at each batch size B (tiles per call; ``desam_predict`` takes one on a CPU since
this measurement, ``inference/tiles.py``). The levers, each against the baseline of the same batch:

- ``baseline``: what ``desam_predict`` runs today: float32 under ``torch.inference_mode``, torch's default
  threads (one per core);
- ``threads1``: one intra-op thread (``torch.set_num_threads(1)``), what a worker beside others gets;
- ``channels_last``: the encoder and the input in channels-last memory format (TinyViT's stages 0-1 are
  convolutions);
- ``compile``: ``torch.compile`` of the image encoder (inductor, one compilation per batch size, not timed);
- ``bf16``: ``torch.autocast("cpu", torch.bfloat16)``;
- ``int8``: ``torch.ao.quantization.quantize_dynamic`` of the encoder's ``nn.Linear`` layers;
- ``onnxruntime``: the encoder exported to ONNX (``torch.onnx.export``, every feature level, once per batch size)
  and run by ONNX Runtime's CPU provider at the same threads (``pip install onnx onnxruntime``; not a dependency of the
  package unless it pays).

Rounds are interleaved (one call of every lever and batch per round) and the best of ``--rounds`` is kept,
so that load from elsewhere spreads over all levers alike; the machine must be quiet all the same. Each
lever's last output (the neck features [B, 256, S/4, S/4]) is compared with the baseline's: the largest
absolute difference says whether the lever changes the numbers (bf16, int8) or only the time.

    python benchmarks/encoder_levers.py                                  # writes results/encoder_levers.json
    python benchmarks/encoder_levers.py --levers baseline --batches 1 2 4 8 32 --out results/encoder_batches.json
    python benchmarks/encoder_levers.py --batches 1 4 --rounds 1 --levers baseline channels_last   # quick

bf16 is in the default run only on a CPU with bf16 arithmetic (avx512_bf16 or AMX): without it, emulated, one
warm-up call took 10 s for one tile and 214 s for 32, against 0.6 s and 29 s in float32. With it (an AMD EPYC with
avx512_bf16, 2026-12-03) it took 82 ms a tile against 200 ms; its Dice cost is ``prediction_options.py``'s.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desam_nnu.model import build_desam  # noqa: E402
from results_file import record_run  # noqa: E402

LEVERS = ("baseline", "threads1", "channels_last", "compile", "bf16", "int8", "onnxruntime")
DEFAULT_LEVERS = ("baseline", "threads1", "channels_last", "compile", "int8") + (
    ("bf16",) if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else ())


def _lever(name: str, backbone: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the tiles [B, 3, S, S] (0..255) to the neck features, with ``name``'s setting applied."""
    torch.manual_seed(0)  # the same random weights for every lever
    kw = {"pretrained": False} if backbone == "medsam_lite" else {}
    desam = build_desam(backbone, image_size=image_size, **kw).eval()
    threads = torch.get_num_threads()
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x  # noqa: E731
    if name == "channels_last":
        desam.image_encoder.to(memory_format=torch.channels_last)
        prepare = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    elif name == "compile":
        desam.image_encoder = torch.compile(desam.image_encoder, dynamic=False)
    elif name == "bf16":
        context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    elif name == "int8":
        desam.image_encoder = torch.ao.quantization.quantize_dynamic(desam.image_encoder, {torch.nn.Linear},
                                                                     dtype=torch.qint8)
    elif name == "onnxruntime":
        return _onnxruntime(desam, image_size, threads)
    elif name != "threads1" and name != "baseline":
        raise ValueError(f"unknown lever {name!r}; known: {', '.join(LEVERS)}")

    def encode(tiles: torch.Tensor) -> torch.Tensor:
        if name == "threads1":
            torch.set_num_threads(1)
        try:
            with torch.inference_mode(), context():
                return desam.encode(prepare(tiles))[-1].float()
        finally:
            torch.set_num_threads(threads)

    return encode


class _Encoder(torch.nn.Module):
    """DeSAM.encode as a module for the ONNX export: tiles [B, 3, S, S] -> every feature level."""

    def __init__(self, desam) -> None:
        super().__init__()
        self.desam = desam

    def forward(self, tiles: torch.Tensor):
        return tuple(self.desam.encode(tiles))


def _onnxruntime(desam, image_size: int, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder through ONNX Runtime, run at ``threads``: exported (every level, as PDMM needs them all) once per
    batch size, as ``compile`` compiles once per batch size (TinyViT's reshapes fix the batch in the traced graph)."""
    import io

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions: Dict[int, "ort.InferenceSession"] = {}

    def encode(tiles: torch.Tensor) -> torch.Tensor:
        b = tiles.shape[0]
        if b not in sessions:
            graph = io.BytesIO()
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(_Encoder(desam), (tiles.clone(),), graph, input_names=["tiles"], dynamo=False)
            sessions[b] = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(sessions[b].run(None, {"tiles": tiles.numpy()})[-1])

    return encode


def measure(levers: List[str], batches: List[int], rounds: int, backbone: str, image_size: int) -> List[dict]:
    """ms per tile, best of ``rounds`` interleaved calls after one warm-up call, per lever and batch."""
    tiles = {b: torch.rand(b, 3, image_size, image_size, generator=torch.Generator().manual_seed(b)) * 255
             for b in batches}
    fns, rows, reference = {}, [], {}
    for name in levers:
        fns[name] = _lever(name, backbone, image_size)
        for b in batches:
            start = time.perf_counter()
            out = fns[name](tiles[b])  # warm-up (and, for compile, the compilation)
            row = {"lever": name, "batch": b, "warmup_s": round(time.perf_counter() - start, 2), "runs_ms": []}
            if name == "baseline":
                reference[b] = out
            elif b in reference:
                row["max_abs_diff_vs_baseline"] = float((out - reference[b]).abs().max())
            rows.append(row)
            print(f"  {name} batch {b}: warm-up {row['warmup_s']} s", file=sys.stderr, flush=True)
    for r in range(rounds):
        for row in rows:
            start = time.perf_counter()
            fns[row["lever"]](tiles[row["batch"]])
            row["runs_ms"].append(round((time.perf_counter() - start) * 1e3, 1))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    for row in rows:
        row["ms_per_tile"] = round(min(row["runs_ms"]) / row["batch"], 2)  # the minimum: load only ever adds
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="medsam_lite")
    ap.add_argument("--image-size", type=int, default=128, help="network input (the plans' size for hippocampus)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="tiles per call")
    ap.add_argument("--levers", nargs="+", default=list(DEFAULT_LEVERS), choices=LEVERS)
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per lever and batch (best of)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "encoder_levers.json")
    args = ap.parse_args(argv)
    levers = ["baseline"] + [lv for lv in args.levers if lv != "baseline"]  # every lever is compared with it
    if "onnxruntime" in levers and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime skipped: not installed (pip install onnx onnxruntime)", file=sys.stderr)
        levers.remove("onnxruntime")
    rows = measure(levers, sorted(set(args.batches)), args.rounds, args.backbone, args.image_size)
    base: Dict[int, float] = {r["batch"]: r["ms_per_tile"] for r in rows if r["lever"] == "baseline"}
    print("| lever | batch | ms / tile | vs baseline | max abs diff |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lever']} | {r['batch']} | {r['ms_per_tile']:.1f} | {r['ms_per_tile'] / base[r['batch']]:.2f}x "
              f"| {r.get('max_abs_diff_vs_baseline', '-')} |")
    meta = {"backbone": args.backbone, "image_size": args.image_size, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
    record_run(args.out, {"meta": meta, "results": rows}, "encoder_levers.py", argv)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
