"""The GPU section of BENCHMARKS.md: ``benchmarks/gpu_check.py``'s CUDA-path timings, or why there are none."""
from __future__ import annotations

from report import Results, clean_command, code, fmt_mib, md_table, not_measured, num


def _s(v, digits: int = 3) -> str:
    return "-" if num(v) is None else f"{num(v):.{digits}f} s"


def section_gpu(res: Results) -> str:
    d = res.get("gpu_check")
    if d is None:
        return (not_measured("gpu_check") + "\n\nIt needs a CUDA device. No GPU machine has been lent to a session "
                "yet, so every figure in this document is from the CPU; the script is ready for the first one.")
    rows = [[r.get("backbone"), r.get("image_size"), r.get("device"), _s(r.get("cache_s_per_slice"), 4),
             f"{_s(r.get('train_s_per_iter'))} (batch {r.get('batch_size')})", _s(r.get("predict_box_s_per_slice"), 4),
             _s(r.get("predict_grid_s_per_slice"), 4),
             " / ".join(fmt_mib(r.get(k)) for k in ("cache_peak_gpu_mib", "train_peak_gpu_mib",
                                                 "predict_box_peak_gpu_mib", "predict_grid_peak_gpu_mib")),
             code(clean_command(r.get("command")))] for r in d.get("rows", [])]
    return ("The CUDA path end to end on a hippocampus subset, random weights: the embedding cache build (frozen "
            "encoder under AMP), training steps (AMP, nnU-Net's grad scaler) and the sliding-window prediction "
            "of one validation volume without mirroring, in box and grid mode, each with its peak GPU memory "
            "(`torch.cuda.max_memory_allocated`).\n\n"
            + md_table(["backbone", "input", "device", "cache build / slice", "train step", "predict box / slice",
                        "predict grid / slice", "peak GPU memory: cache / train / box / grid", "command"], rows))
