"""The GPU section of BENCHMARKS.md: ``benchmarks/gpu_check.py``'s CUDA-path timings, or why there are none."""
from __future__ import annotations

from report import Results, clean_command, code, fill, fmt_mib, md_table, not_measured, num

MODES = ("box", "grid", "prompt_free")


def _s(v, digits: int = 3) -> str:
    return "-" if num(v) is None else f"{num(v):.{digits}f} s"


def gpu_device(data: dict) -> str:
    """The GPU the check ran on (the first row's), for the document's header."""
    rows = data.get("rows") or [{}]
    return str(rows[0].get("device") or "GPU")


def _speed_up(single, batched) -> str:
    a, b = num(single), num(batched)
    return "-" if a is None or not b else f"{a / b:.2f}x"


def section_gpu(res: Results) -> str:
    d = res.get("gpu_check")
    if d is None:
        return fill("gpu_none", missing=not_measured("gpu_check"))
    rows = [[r.get("family", "desam"), r.get("backbone"), r.get("image_size"), r.get("device"),
             _s(r.get("cache_s_per_slice"), 4), f"{_s(r.get('train_s_per_iter'))} (batch {r.get('batch_size')})",
             " / ".join(_s(r.get(f"predict_{m}_s_per_slice"), 4) for m in MODES),
             " / ".join(fmt_mib(r.get(k)) for k in ["cache_peak_gpu_mib", "train_peak_gpu_mib"]
                        + [f"predict_{m}_peak_gpu_mib" for m in MODES]),
             code(clean_command(r.get("command") or d.get("command")))] for r in d.get("rows", [])]
    batches = [[r.get("family", "desam"), r.get("backbone"), r.get("image_size"), m.replace("_", "-"),
                r.get(f"predict_{m}_tiles_per_call"), _s(r.get(f"predict_{m}_s_per_slice"), 4),
                _s(r.get(f"predict_{m}_one_tile_s_per_slice"), 4),
                _speed_up(r.get(f"predict_{m}_one_tile_s_per_slice"), r.get(f"predict_{m}_s_per_slice")),
                " / ".join(fmt_mib(r.get(f"predict_{m}{s}_peak_gpu_mib")) for s in ("", "_one_tile"))]
               for r in d.get("rows", []) for m in MODES if num(r.get(f"predict_{m}_one_tile_s_per_slice")) is not None]
    batched = ("\n\n" + fill("gpu_batches", table=md_table(
        ["family", "backbone", "input", "mode", "tiles per call", "predict / slice", "one tile at a time", "speed-up",
         "peak GPU memory: batched / one tile"], batches)) if batches else "")
    tests = d.get("cuda_tests") or {}
    tested = ("\n\n" + fill("gpu_tests", result=tests["result"], command=tests["command"])
              if tests.get("result") else "")
    versions = f" torch {d['torch']}, CUDA {d['cuda']}." if d.get("torch") else ""
    return fill("gpu_check", versions=versions, tests=tested, batches=batched,
                table=md_table(["family", "backbone", "input", "device", "cache build / slice", "train step",
                                "predict / slice: box / grid / prompt-free",
                                "peak GPU memory: cache / train / box / grid / prompt-free", "command"], rows))
