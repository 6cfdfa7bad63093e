"""The fold-ensemble section of BENCHMARKS.md: ``benchmarks/ensemble.py``'s model-folder bytes, prediction time
and peak memory of a 5-fold ViT-B model, before and after slim checkpoints and encode-once ensembles."""
from __future__ import annotations

from report import MIB, Results, clean_command, code, fmt_ratio, fmt_s, md_table, not_measured, num, ratio

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
    verdict = (f"The {d['folds']}-fold ensemble now takes {after:.2f}x one fold's time (goal: at most {GOAL:g}x): "
               f"{'met' if after <= GOAL else 'not met'}.")
    return (f"`{d['backbone']}` with random weights on hippocampus plans, {d['folds']} folds of nnU-Net's two lasting "
            f"checkpoints each (best and final), `desam_predict` in box mode without mirroring on {d['cases']} "
            "volumes (wall time and the peak RSS of the process tree, start-up included). Before: full weights in "
            "every checkpoint and nnU-Net's per-fold loop (each fold's weights loaded in turn, every tile encoded "
            "once per fold). After: slim checkpoints (the frozen encoder once in the model folder) and the "
            "encode-once ensemble (one encoder pass, one decoder pass per fold). " + verdict + "\n\n"
            + md_table(["", "model folder", "1 fold", f"{d['folds']} folds", f"{d['folds']} folds / 1 fold",
                        "peak RSS, 1 fold", f"peak RSS, {d['folds']} folds"], rows)
            + f"\n\nCommand: {code(clean_command(d.get('command')))}")
