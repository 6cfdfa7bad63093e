"""BENCHMARKS.md section of ``allocator.py``: prediction with glibc's malloc keeping freed memory (the CPU default,
``desam_nnu/allocator.py``) against glibc's own settings."""
from __future__ import annotations

from typing import List

from report import BY_NAME, Results, Row, clean_command, fill, fmt_mib, fmt_s, md_table, not_measured, num, \
    standard_table

KEPT, DEFAULT = "freed memory kept", "glibc default"


def rows_allocator(d: dict) -> List[Row]:
    """Per setting: seconds per volume and peak RSS, kept against glibc's default."""
    out = []
    for r in d.get("rows", []):
        kept, default = r.get("arms", {}).get(KEPT, {}), r.get("arms", {}).get(DEFAULT, {})
        name = f"{r.get('setting')} mode, {r.get('model')}, {r.get('cases')} volumes"
        cmd = clean_command(r.get("command") or d.get("command")) or BY_NAME["allocator"].command()
        for measure, key, fmt in (("s / volume", "s_per_volume", fmt_s), ("peak RSS", "peak_rss_mib", fmt_mib)):
            a, b = num(kept.get(key)), num(default.get(key))
            out.append(Row(f"{measure}, {name}", fmt(a), f"{fmt(b)} (glibc default)",
                           None if a is None or not b else a / b, "-", cmd))
    return out


def section_allocator(res: Results) -> str:
    d = res.get("allocator")
    if d is None:
        return not_measured("allocator")
    detail = []
    for r in d.get("rows", []):
        arms = r.get("arms", {})
        for arm in (DEFAULT, KEPT):
            a = arms.get(arm, {})
            faults, dice = num(a.get("minor_faults_per_volume")), num(a.get("dice"))
            detail.append([r.get("setting"), r.get("model"), arm, fmt_s(a.get("s_per_volume")),
                           ", ".join(f"{s:.3g}" for s in a.get("all_s", [])),
                           "-" if faults is None else f"{faults:,.0f}", fmt_mib(a.get("peak_rss_mib")),
                           "-" if dice is None else f"{dice:.4f}",
                           {True: "yes", False: "no"}.get(r.get("identical_label_maps"), "-")])
    table = md_table(["mode", "model", "malloc", "s / volume (best round)", "every round",
                      "minor page faults / volume", "peak RSS", "mean Dice", "label maps identical in every run"],
                     detail)
    meta = d.get("meta", {})
    return fill("allocator", standard=standard_table(rows_allocator, d), detail=table,
                rounds=meta.get("rounds", "?"), libc=meta.get("libc", "?"))
