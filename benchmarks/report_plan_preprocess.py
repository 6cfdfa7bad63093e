"""BENCHMARKS.md section of ``plan_preprocess.py``: planning and preprocessing against nnU-Net's."""
from __future__ import annotations

import re
from typing import List

from report import BY_NAME, Results, Row, fill, fmt_mib, fmt_s, not_measured, num, ratio, standard_table, target_text


def rows_preprocess(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["plan_preprocess"].command()
    out = []
    for r in d.get("rows", []):
        unit = r.get("unit", "")
        f = fmt_s if unit == "s" else fmt_mib if unit == "MiB" else \
            (lambda x, u=unit: "-" if num(x) is None else f"{x:g} {u}".strip())
        rt = ratio(r.get("ours"), r.get("nnunet"))
        m = re.search(r"<=\s*([\d.]+)", str(r.get("target", "")))
        target = target_text(rt, float(m.group(1))) if m else str(r.get("target") or "-")
        out.append(Row(str(r.get("measure")), f(r.get("ours")), f"{f(r.get('nnunet'))} (nnU-Net 2d)", rt, target, cmd))
    return out


def section_preprocess(res: Results) -> str:
    d = res.get("plan_preprocess")
    if d is None:
        return not_measured("plan_preprocess")
    return fill("plan_preprocess", processes=d.get("num_processes", 2), cases=d.get("cases", "all"),
                dataset=d.get("dataset", "Dataset004_Hippocampus"), repeats=d.get("repeats", 1),
                table=standard_table(rows_preprocess, d))
