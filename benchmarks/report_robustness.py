"""BENCHMARKS.md section of ``robustness.py``: Dice drops under simulated scanner shifts, DeSAM against nnU-Net."""
from __future__ import annotations

from typing import Dict, List

from report import Results, clean_command, code, fill, md_table, not_measured, num

# what nnU-Net 2.8.1's get_training_transforms already trains against (DeSAM's default online trainer uses the
# same transforms, so both models of the race saw it; but DeSAM's models trained before 2026-12-02 got its
# additive noise on 0..255, not on z-scores: 0.1 grey values, nothing)
AUGMENTATION = {
    "bias_field": "no",
    "gamma_down": "partly: gamma 0.7-1.5 (shift down to 0.30)",
    "gamma_up": "partly: gamma 0.7-1.5 (shift up to 3.0)",
    "rician_noise": "partly: Gaussian noise, std up to 0.1 of the image's (DeSAM before 2026-12-02: none)",
    "blur": "partly: Gaussian blur, sigma 0.5-1 voxel",
    "ghosting": "no",
    "motion": "no",
    "anisotropy": "partly: simulated low resolution, 1-2x",
}


def _mean_drop(s: dict) -> float:
    drops = [num(v) for v in s["drop"].values()]
    return sum(drops) / len(drops)


def robustness_rows(d: dict) -> List[List[str]]:
    """One line per shift: each model's drop at the levels run and its weighted summary, and the augmentation."""
    models = list(d["summary"])
    rows = []
    for shift in d["shifts"]:
        line = [shift.replace("_", " ")]
        for m in models:
            s = d["summary"][m][shift]
            line += [" / ".join(f"{num(s['drop'][str(lv)]):+.3f}" for lv in d["levels"]), f"{num(s['weighted']):.3f}"]
        rows.append(line + [AUGMENTATION.get(shift, "-")])
    return rows


def verdict(d: dict) -> str:
    """Which model degrades less, by the mean drop over the levels run, shift by shift."""
    models = list(d["summary"])
    if len(models) != 2:
        return ""
    a, b = models
    less: Dict[str, List[str]] = {a: [], b: []}
    for shift in d["shifts"]:
        da, db = _mean_drop(d["summary"][a][shift]), _mean_drop(d["summary"][b][shift])
        less[a if da < db else b].append(shift.replace("_", " "))
    overall = {m: sum(_mean_drop(d["summary"][m][s]) for s in d["shifts"]) / len(d["shifts"]) for m in models}
    better = min(overall, key=overall.get)
    return fill("robustness_verdict", better=better, best_drop=f"{overall[better]:.3f}",
                other_drop=f"{overall[a if better == b else b]:.3f}", a=a, b=b,
                a_shifts=", ".join(less[a]) or "no shift", b_shifts=", ".join(less[b]) or "no shift")


def _timing(d: dict) -> str:
    before = d.get("predictions_done_before") or 0
    if before:
        return (f"{d['seconds'] / 60:.0f} minutes in its last invocation ({before} model x set predictions were "
                f"done by an earlier one, smaller or interrupted: the study resumes)")
    return f"{d['seconds'] / 60:.0f} minutes in all"


def section_robustness(res: Results) -> str:
    d = res.get("robustness")
    if d is None:
        return not_measured("robustness")
    models = list(d["summary"])
    clean = ", ".join(f"{m} {num(d['summary'][m][next(iter(d['shifts']))]['dice']['0']):.3f}" for m in models)
    header = ["shift"] + [x for m in models for x in (f"{m}: drop at L{'/L'.join(map(str, d['levels']))}",
                                                      f"{m}: weighted")] + ["in nnU-Net's training augmentation"]
    return fill("robustness", minutes=f"{num(d['minutes']):g}", cases=len(d["cases"]),
                mirroring="with" if d.get("use_mirroring") else "without", clean=clean, timing=_timing(d),
                command=code(clean_command(d.get("command"))), table=md_table(header, robustness_rows(d)),
                verdict=verdict(d), png=d.get("png", "robustness.png"))
