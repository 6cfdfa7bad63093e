"""BENCHMARKS.md section of ``encoder.py``: the image encoder's cost per slice."""
from __future__ import annotations

from typing import List, Optional

from report import Results, Row, fill, fmt_ms, fmt_ratio, md_table, not_measured, ratio, standard_table


def encoder_command(d: dict) -> str:
    meta, res = d.get("meta", {}), d.get("results", [])
    configs = [f"{r.get('backbone')}:{r.get('image_size')}" for r in res]
    parts = ["python benchmarks/encoder.py"]
    if configs and configs != ["medsam_lite:128", "medsam_lite:192", "medsam_lite:256", "tiny:256", "vit_b:1024"]:
        parts.append("--configs " + " ".join(configs))
    if meta.get("repeats", 3) != 3:
        parts.append(f"--repeats {meta['repeats']}")
    if meta.get("threads", 2) != 2:
        parts.append(f"--threads {meta['threads']}")
    return " ".join(parts)


def _encoder_ref(d: dict) -> Optional[dict]:
    return next((r for r in d.get("results", []) if r.get("backbone") == "vit_b" and r.get("image_size") == 1024),
                next((r for r in d.get("results", []) if r.get("backbone") == "vit_b"), None))


def rows_encoder(d: dict) -> List[Row]:
    """Each configuration against the reference (``_encoder_ref``); without one, no reference and no ratio."""
    cmd, ref = encoder_command(d), _encoder_ref(d)
    base = ref.get("ms_per_slice") if ref else None
    against = f"{fmt_ms(base)} (vit_b at {ref.get('image_size')} px)" if ref else "-"
    return [Row(f"encoder ms / slice, {r.get('backbone')} at {r.get('image_size')} px",
                fmt_ms(r.get("ms_per_slice")), against, ratio(r.get("ms_per_slice"), base), "-", cmd)
            for r in d.get("results", []) if r is not ref]


def section_encoder(res: Results) -> str:
    d = res.get("encoder")
    if d is None:
        return not_measured("encoder")
    meta, ref = d.get("meta", {}), _encoder_ref(d)
    detail = []
    for r in d.get("results", []):
        fast = ratio(ref.get("ms_per_slice"), r.get("ms_per_slice")) if ref and r is not ref else None
        detail.append([r.get("backbone"), r.get("image_size"), f"{r.get('encoder_params_m', '-')} M",
                       fmt_ms(r.get("ms_per_slice")), f"{fmt_ratio(fast)} faster" if fast else "-",
                       f"{r.get('cache_mib_per_slice_fp16', '-')} MiB",
                       str(r.get("mask_logits", "-")).replace("x", " x ")])
    return fill("encoder", batch=meta.get("batch", 1), threads=meta.get("threads", "?"),
                repeats=meta.get("repeats", "?"), table=standard_table(rows_encoder, d),
                detail=md_table(["backbone", "input", "encoder params", "ms / slice", "vs vit_b at 1024",
                                 "cache fp16 / slice", "mask logits"], detail))
