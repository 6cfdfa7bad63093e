"""BENCHMARKS.md section of ``prediction_options.py``: Dice and seconds per volume of the inexact prediction options
(``--bf16``, ``--coarse-grid``) against the exact decode, and whether each meets #22's rule."""
from __future__ import annotations

from typing import List

from report import (CLASSES, BY_NAME, Results, Row, clean_command, fill, fmt_dice, fmt_s, md_table, not_measured,
                    num, ratio, standard_table)

RULE = 0.002  # prediction_options.RULE: |mean Dice change| below which an inexact option may become a default
FLAGS = {"bf16": "--bf16", "coarse_grid": "--coarse-grid", "onnxruntime": "ONNX Runtime encoder"}


def _rule_text(change) -> str:
    c = num(change)
    return "-" if c is None else f"change within {RULE:g}, {'met' if abs(c) < RULE else 'missed'}"


def rows_prediction_options(d: dict) -> List[Row]:
    """Per option and setting: mean Dice against the exact decode (the rule), seconds per volume against it."""
    out = []
    for r in d.get("rows", []):
        name = f"{FLAGS.get(r.get('option'), r.get('option'))}, {r.get('setting')}, {r.get('cases')} volumes"
        exact, option = r.get("exact", {}), r.get("with_option", {})
        cmd = clean_command(r.get("command")) or BY_NAME["prediction_options"].command()
        out.append(Row(f"mean Dice, {name}", fmt_dice(option.get("dice"), 4), f"{fmt_dice(exact.get('dice'), 4)} "
                       f"(exact)", ratio(option.get("dice"), exact.get("dice")), _rule_text(r.get("dice_change")),
                       cmd))
        out.append(Row(f"s / volume, {name}", fmt_s(option.get("s_per_volume")),
                       f"{fmt_s(exact.get('s_per_volume'))} (exact)",
                       ratio(option.get("s_per_volume"), exact.get("s_per_volume")), "-", cmd))
    return out


def section_prediction_options(res: Results) -> str:
    d = res.get("prediction_options")
    if d is None:
        return not_measured("prediction_options")
    detail = []
    for r in d.get("rows", []):
        exact, option = r.get("exact", {}), r.get("with_option", {})
        per_class = [f"{fmt_dice(exact.get('dice_per_class', {}).get(c), 4)} -> "
                     f"{fmt_dice(option.get('dice_per_class', {}).get(c), 4)}" for c in CLASSES]
        change = num(r.get("dice_change"))
        detail.append([FLAGS.get(r.get("option"), r.get("option")), r.get("setting"), r.get("model"), r.get("cases"),
                       *per_class, "-" if change is None else f"{change:+.4f}",
                       f"{(ratio(exact.get('s_per_volume'), option.get('s_per_volume')) or 0):.2f}x"])
    table = md_table(["option", "setting", "model", "volumes", *(f"Dice {c}, exact -> option" for c in
                                                                 CLASSES.values()),
                      "mean Dice change", "speed-up"], detail)
    meta = d.get("meta", {})
    return fill("prediction_options", standard=standard_table(rows_prediction_options, d), detail=table,
                threads=meta.get("threads", "?"), torch=meta.get("torch", "?"), rule=f"{RULE:g}")
