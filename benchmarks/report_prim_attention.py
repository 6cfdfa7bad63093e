"""BENCHMARKS.md section of ``prim_attention.py``: PRIM's attention against segment_anything's."""
from __future__ import annotations

from typing import List

from report import BY_NAME, Results, Row, fill, fmt_s, not_measured, num, ratio, standard_table


def rows_prim_attention(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["prim_attention"].command()
    out = []
    for r in d.get("results", []):
        for job, label in (("grid", "grid decode of 81 prompts"), ("prim train", "PRIM forward + backward, batch 8"),
                           ("train", "training decode + backward, batch 8")):
            cpu = r.get("cpu_s", {})
            ours, sam = (cpu.get("ours") or {}).get(job), (cpu.get("sam") or {}).get(job)
            out.append(Row(f"CPU s, {label}, {r.get('backbone')} at {r.get('image_size')} px ({r.get('neck_tokens')} "
                           "image tokens)", fmt_s(ours), f"{fmt_s(sam)} (SAM's Attention)", ratio(ours, sam), "-", cmd))
        chunks = r.get("chunks") or []
        whole = max(chunks, key=lambda c: c["prompts_per_call"], default=None)
        for c in chunks:
            out.append(Row(f"wall s per tile, grid call with PRIM over {c['prompts_per_call']} prompts at a time, "
                           f"{r.get('backbone')} at {r.get('image_size')} px (max abs diff {c['max_abs_diff']:.0e})",
                           fmt_s(c["wall_s"]), f"{fmt_s(whole['wall_s'])} ({whole['prompts_per_call']} per call)",
                           ratio(c["wall_s"], whole["wall_s"]), "-", cmd))
    return out


def section_prim_attention(res: Results) -> str:
    d = res.get("prim_attention")
    if d is None:
        return not_measured("prim_attention")
    diff = max((num(r.get("grid_max_abs_diff")) or 0 for r in d.get("results", [])), default=0)
    return fill("prim_attention", threads=d.get("threads", "?"), rounds=d.get("rounds", "?"), diff=f"{diff:.1e}",
                sweep_threads=d.get("sweep_threads", "?"), malloc=d.get("malloc", "glibc default"),
                table=standard_table(rows_prim_attention, d))
