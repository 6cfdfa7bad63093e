"""BENCHMARKS.md's peak-memory section: the peaks that ``plan_preprocess.py``, ``train.py`` and ``predict.py``
recorded, side by side."""
from __future__ import annotations

from typing import List

from report import BY_NAME, Results, Row, clean_command, code, fill, fmt_mib, fmt_ratio, md_table, not_measured, ratio
from report_plan_preprocess import rows_preprocess
from report_predict import _ct_row, _variant_label, predict_runs
from report_train import _train_by, train_command


def rows_memory(res: Results) -> List[Row]:
    out: List[Row] = []
    pp = res.get("plan_preprocess")
    if pp:
        out += [r for r in rows_preprocess(pp) if "RSS" in r.measure]
        for r in out:
            r.measure = f"plan and preprocess, {r.measure}"
    tr = res.get("train")
    if tr:
        cmd = train_command(tr)
        for b, by in _train_by(tr).items():
            online = by.get(("online", "float16"), {})
            for dtype in ("float16", "int8"):
                c = by.get(("cache", dtype))
                if c:
                    out.append(Row(f"training step process, {b}, {dtype} cache vs online",
                                   fmt_mib(c.get("peak_rss_mib")),
                                   f"{fmt_mib(online.get('peak_rss_mib'))} (online)",
                                   ratio(c.get("peak_rss_mib"), online.get("peak_rss_mib")), "-", cmd))
    pr = res.get("predict")
    if pr:
        for run in predict_runs(pr):
            cmd = run.get("command") or BY_NAME["predict"].command()
            vs = run.get("vs_nnunet", [])
            ref = next((r for r in vs if r.get("variant") == "nnunet"), None)
            n = (run.get("counts") or [run.get("cases", "?")])[0]
            for r in vs:
                if r is not ref:
                    out.append(Row(f"prediction, {_variant_label(r.get('variant', '?'))}, {n} volume(s), process tree",
                                   fmt_mib(r.get("peak_tree_rss_mib")),
                                   f"{fmt_mib(ref.get('peak_tree_rss_mib'))} (nnU-Net 2D)" if ref else "-",
                                   ratio(r.get("peak_tree_rss_mib"), ref.get("peak_tree_rss_mib")) if ref else None,
                                   "-", cmd))
            if isinstance(run.get("ct"), dict):
                out.append(_ct_row(run["ct"], cmd))
    return out


def section_memory(res: Results) -> str:
    if all(res.get(n) is None for n in ("plan_preprocess", "train", "predict")):
        return not_measured("plan_preprocess", "train", "predict")
    rows = rows_memory(res)
    missing = [n for n in ("plan_preprocess", "train", "predict") if res.get(n) is None]
    return fill("memory", table=md_table(["measure", "ours", "reference", "ratio", "target", "command"],
                                         [[r.measure, r.ours, r.reference, fmt_ratio(r.ratio), r.target or "-",
                                           code(clean_command(r.command))] for r in rows]),
                missing="\n\n" + not_measured(*missing) if missing else "")
