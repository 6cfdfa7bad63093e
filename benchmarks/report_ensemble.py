"""The fold-ensemble section of BENCHMARKS.md: ``benchmarks/ensemble.py``'s model-folder bytes, prediction time
and peak memory of a 5-fold ViT-B model, before and after slim checkpoints and encode-once ensembles."""
from __future__ import annotations

from report import MIB, Results, clean_command, code, fill, fmt_ratio, fmt_s, md_table, not_measured, num, ratio

GOAL = 1.5  # the 5-fold ensemble's time, in one fold's


def section_ensemble(res: Results) -> str:
    d = res.get("ensemble")
    if d is None:
        return not_measured("ensemble")
    rows, after = [], None
    for kind in ("before", "after"):
        r = d["rows"][kind]
        one, five = r["predict"]["1"], r["predict"][str(d["folds"])]
        rows.append([kind, f"{r['folder_bytes'] / MIB:,.0f} MiB", fmt_s(one["seconds"]), fmt_s(five["seconds"]),
                     fmt_ratio(ratio(five["seconds"], one["seconds"])),
                     f"{num(one['peak_tree_rss']) / MIB:,.0f} MiB", f"{num(five['peak_tree_rss']) / MIB:,.0f} MiB"])
        after = (five["seconds"] / one["seconds"]) if kind == "after" else after
    return fill("ensemble", backbone=d["backbone"], folds=d["folds"], cases=d["cases"], after=f"{after:.2f}",
                goal=f"{GOAL:g}", verdict="met" if after <= GOAL else "not met",
                table=md_table(["", "model folder", "1 fold", f"{d['folds']} folds", f"{d['folds']} folds / 1 fold",
                                "peak RSS, 1 fold", f"peak RSS, {d['folds']} folds"], rows),
                command=code(clean_command(d.get("command"))))
