"""BENCHMARKS.md section of ``decoder.py``: DeSAM's grid decode against a loop of single prompts."""
from __future__ import annotations

import math

from typing import List

from report import (Results, Row, fill, fmt_ms, fmt_ratio, fmt_s, md_table, not_measured, num, ratio, standard_table,
                    target_text)


def decoder_command(d: dict) -> str:
    meta, res = d.get("meta", {}), d.get("results", [])
    parts = ["python benchmarks/decoder.py"]
    backbones = [r.get("backbone") for r in res]
    if backbones and backbones != ["tiny", "vit_b", "vit_h"]:
        parts.append("--backbones " + " ".join(map(str, backbones)))
    if meta.get("repeats", 3) != 3:
        parts.append(f"--repeats {meta['repeats']}")
    grid = meta.get("grid_points", 81)
    if grid != 81:
        parts.append(f"--grid {round(math.sqrt(grid))}")
    if meta.get("top_k", 1) != 1:
        parts.append(f"--top-k {meta['top_k']}")
    loop = res[0].get("loop_measured_prompts", 9) if res else 9
    if loop != 9:
        parts.append(f"--loop-prompts {loop}")
    if any("batched_all_ms" in r for r in res):
        parts.append("--batched-all")
    if meta.get("image_size", 1024) != 1024:
        parts.append(f"--image-size {meta['image_size']}")
    if meta.get("device", "cpu") != "cpu":
        parts.append("--device cuda")
    return " ".join(parts)


def rows_decoder(d: dict) -> List[Row]:
    cmd = decoder_command(d)
    out = []
    for r in d.get("results", []):
        b, p = r.get("backbone"), r.get("prompts", 81)
        rt = ratio(r.get("grid_ms"), r.get("single_ms"))
        out.append(Row(f"decoder, grid of {p} prompts vs 1 prompt, {b} dims", fmt_ms(r.get("grid_ms")),
                       f"{fmt_ms(r.get('single_ms'))} (1 prompt)", rt,
                       target_text(rt, 10) if b == "vit_h" else "- (<= 10x is for vit_h)", cmd))
        out.append(Row(f"decoder, grid of {p} prompts vs a loop of {p} single decodes, {b} dims",
                       fmt_ms(r.get("grid_ms")), f"{fmt_ms(r.get('loop_ms'))} (loop)",
                       ratio(r.get("grid_ms"), r.get("loop_ms")), "-", cmd))
    return out


def section_decoder(res: Results) -> str:
    d = res.get("decoder")
    if d is None:
        return not_measured("decoder")
    meta, rows = d.get("meta", {}), d.get("results", [])
    p = meta.get("grid_points", 81)
    detail = md_table(
        ["decoder dims", "PDMM input", "1 prompt", f"grid {p}", "grid / 1 prompt", f"loop {p}", "loop / grid"],
        [[r.get("backbone"), r.get("pdmm_input_width", "-"), fmt_ms(r.get("single_ms")), fmt_ms(r.get("grid_ms")),
          fmt_ratio(ratio(r.get("grid_ms"), r.get("single_ms"))), fmt_s(num(r.get("loop_ms")) and r["loop_ms"] / 1000),
          fmt_ratio(ratio(r.get("loop_ms"), r.get("grid_ms")))] for r in rows])
    loop_n = rows[0].get("loop_measured_prompts", p) if rows else p
    return fill("decoder", image_size=meta.get("image_size", 1024), repeats=meta.get("repeats", "?"),
                threads=meta.get("threads", "?"), points=p, top_k=meta.get("top_k", 1), loop_measured=loop_n,
                table=standard_table(rows_decoder, d), detail=detail)
