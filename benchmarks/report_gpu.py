"""The GPU section of BENCHMARKS.md: ``benchmarks/gpu_check.py``'s CUDA-path timings, or why there are none."""
from __future__ import annotations

from report import Results, clean_command, code, fmt_mib, md_table, not_measured, num

MODES = ("box", "grid", "prompt_free")


def _s(v, digits: int = 3) -> str:
    return "-" if num(v) is None else f"{num(v):.{digits}f} s"


def gpu_device(data: dict) -> str:
    """The GPU the check ran on (the first row's), for the document's header."""
    rows = data.get("rows") or [{}]
    return str(rows[0].get("device") or "GPU")


def section_gpu(res: Results) -> str:
    d = res.get("gpu_check")
    if d is None:
        return (not_measured("gpu_check") + "\n\nIt needs a CUDA device. No GPU machine has been lent to a session "
                "yet, so every figure in this document is from the CPU; the script is ready for the first one.")
    rows = [[r.get("family", "desam"), r.get("backbone"), r.get("image_size"), r.get("device"),
             _s(r.get("cache_s_per_slice"), 4), f"{_s(r.get('train_s_per_iter'))} (batch {r.get('batch_size')})",
             " / ".join(_s(r.get(f"predict_{m}_s_per_slice"), 4) for m in MODES),
             " / ".join(fmt_mib(r.get(k)) for k in ["cache_peak_gpu_mib", "train_peak_gpu_mib"]
                        + [f"predict_{m}_peak_gpu_mib" for m in MODES]),
             code(clean_command(r.get("command") or d.get("command")))] for r in d.get("rows", [])]
    tests = d.get("cuda_tests") or {}
    tested = (f"\n\nOn the same machine, the CUDA-path tests (on CUDA, for DeSAM and DAPSAM: a training step with "
              f"AMP and nnU-Net's grad scaler and the final validation, and for DAPSAM `desam_predict -device "
              f"cuda`; and the torch.compile key handling): {tests['result']} (`{tests['command']}`)."
              if tests.get("result") else "")
    versions = f" torch {d['torch']}, CUDA {d['cuda']}." if d.get("torch") else ""
    return ("The CUDA path end to end on a hippocampus subset, random weights, each family with its own trainer: "
            "the embedding cache build (frozen encoder under AMP, features written to disk; DeSAM only: DAPSAM's "
            "adapters change the features, so it encodes online), training steps (AMP, nnU-Net's grad scaler) and "
            "the sliding-window prediction of one validation volume without mirroring, after one warm-up "
            "volume: in box and grid mode for DeSAM, prompt-free for DAPSAM. Peak GPU memory is "
            "`torch.cuda.max_memory_allocated` per phase." + versions + tested + "\n\n"
            + md_table(["family", "backbone", "input", "device", "cache build / slice", "train step",
                        "predict / slice: box / grid / prompt-free",
                        "peak GPU memory: cache / train / box / grid / prompt-free", "command"], rows))
