"""BENCHMARKS.md sections of ``train.py``: the training step from the cache against online encoding, and the
cache's bytes per slice."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from report import Results, Row, fill, fmt_ratio, fmt_s, not_measured, num, ratio, standard_table, target_text


def train_command(d: dict, backbone: Optional[str] = None) -> str:
    """The command of ``backbone``'s rows (each row records its own), else one rebuilt from the file."""
    own = [r.get("command") for r in d.get("rows", []) if r.get("backbone") == backbone and r.get("command")]
    if own:
        return own[0]
    backbones = list(dict.fromkeys(r.get("backbone") for r in d.get("rows", [])))
    parts = ["python benchmarks/train.py"]
    if backbones and backbones != ["tiny", "vit_b"]:
        parts.append("--backbones " + " ".join(map(str, backbones)))
    if "cases" in d:
        parts.append(f"--cases {d['cases']}")
    if "iterations" in d:
        parts.append(f"--iterations {d['iterations']}")
    return " ".join(parts)


def _train_by(d: dict) -> Dict[str, Dict[Tuple[str, str], dict]]:
    by: Dict[str, Dict[Tuple[str, str], dict]] = {}
    for r in d.get("rows", []):
        by.setdefault(r.get("backbone"), {})[(r.get("mode"), r.get("dtype"))] = r
    return by


def _train_ratios(d: dict, field: str, ours: Tuple[str, str], ref: Tuple[str, str]) -> List[Tuple[str, float]]:
    """Per backbone, ``field`` of its ``ours`` (mode, dtype) row over that of its ``ref`` row, where both have it."""
    out = []
    for b, by in _train_by(d).items():
        rt = ratio(by.get(ours, {}).get(field), by.get(ref, {}).get(field))
        if rt:
            out.append((b, rt))
    return out


def rows_train(d: dict) -> List[Row]:
    out = []
    for b, by in _train_by(d).items():
        cmd = train_command(d, b)
        online = by.get(("online", "float16"), {})
        for dtype in ("float16", "int8"):
            cached = by.get(("cache", dtype))
            if cached is None:
                continue
            rt = ratio(cached.get("sec_per_iter"), online.get("sec_per_iter"))
            out.append(Row(f"training step s / iter, {b}, {dtype} cache vs online encoding",
                           fmt_s(cached.get("sec_per_iter")), f"{fmt_s(online.get('sec_per_iter'))} (online)", rt,
                           target_text(rt, 0.2) if dtype == "float16" else "-", cmd))
    return out


def section_train(res: Results) -> str:
    d = res.get("train")
    if d is None:
        return not_measured("train")
    rows = d.get("rows", [])
    first = rows[0] if rows else {}
    notes = [f"for `{b}` the cache makes a step {rt:.1f}x faster"
             for b, rt in _train_ratios(d, "sec_per_iter", ("online", "float16"), ("cache", "float16"))]
    builds = []
    for b, by in _train_by(d).items():
        for dtype in ("float16", "int8"):
            c = by.get(("cache", dtype), {})
            if num(c.get("prepare_s")) and c.get("cache_items"):
                builds.append(f"{b} {dtype} {c['prepare_s']:.0f} s ({c['prepare_s'] / c['cache_items']:.2f} s a slice)")
    subsets = "; ".join(f"{b}: {r.get('cases', d.get('cases', '?'))} cases, input {r.get('image_size', '?')}"
                        for b, r in ((b, next(iter(by.values()))) for b, by in _train_by(d).items()))
    return fill("train", subsets=subsets, batch_size=first.get("batch_size", "?"), table=standard_table(rows_train, d),
                speedups="; ".join(notes).capitalize() + ". " if notes else "",
                builds=" " + fill("train_builds", slices=first.get("cache_items", "?"), builds="; ".join(builds))
                if builds else "")


def rows_cache_bytes(d: dict) -> List[Row]:
    out = []
    for b, by in _train_by(d).items():
        cmd = train_command(d, b)
        for dtype in ("float16", "int8"):
            c = by.get(("cache", dtype))
            if not c or "cache_bytes_per_slice" not in c:
                continue
            ours, ref = c.get("cache_bytes_per_slice"), c.get("official_float32_bytes_per_slice")
            out.append(Row(f"cache bytes per slice, {b}, {dtype}", f"{ours:,} B",
                           f"{ref:,} B (official float32)" if num(ref) else "-", ratio(ours, ref), "-", cmd))
    return out


def section_cache_bytes(res: Results) -> str:
    d = res.get("train")
    if d is None:
        return not_measured("train")
    parts = [f"`{b}` {fmt_ratio(rt)}"
             for b, rt in _train_ratios(d, "cache_bytes_per_slice", ("cache", "int8"), ("cache", "float16"))]
    return fill("cache_bytes", table=standard_table(rows_cache_bytes, d),
                int8=fill("cache_bytes_int8", ratios=", ".join(parts)) + " " if parts else "")
