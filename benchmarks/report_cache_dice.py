"""BENCHMARKS.md section of ``cache_dice.py``: Dice after training from an int8 cache against float16."""
from __future__ import annotations

from typing import Dict, List, Optional

from report import BY_NAME, CLASSES, Results, Row, fill, fmt_dice, md_table, not_measured, num, ratio, standard_table


def _cache_dice_rows(d: dict) -> Dict[str, dict]:
    return {r.get("dtype"): r for r in d.get("rows", [])}


def _dice_values(r: dict) -> List[Optional[float]]:
    """A cache_dice row's pseudo Dice of each class (anterior, posterior), then its volume Dice."""
    return [*(list(r.get("pseudo_dice_per_class") or []) + [None, None])[:2], r.get("mean_dice")]


def rows_cache_dice(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["cache_dice"].command()
    by = _cache_dice_rows(d)
    i8, f16 = by.get("int8"), by.get("float16")
    if not i8 or not f16:
        return []
    labels = [f"pseudo Dice {CLASSES[c]}" for c in ("1", "2")] + ["volume Dice (grid mode), mean"]
    return [Row(f"{label}, int8 vs float16 cache", fmt_dice(a, 4), f"{fmt_dice(b, 4)} (float16)", ratio(a, b), "-", cmd)
            for label, a, b in zip(labels, _dice_values(i8), _dice_values(f16))]


def section_cache_dice(res: Results) -> str:
    d = res.get("cache_dice")
    if d is None:
        return not_measured("cache_dice")
    by = _cache_dice_rows(d)
    detail = [[dtype, *(fmt_dice(v, 4) for v in _dice_values(by[dtype]))]
              for dtype in ("float16", "int8") if by.get(dtype)]
    i8, f16 = by.get("int8"), by.get("float16")
    if i8 and f16:
        detail.append(["int8 - float16", *(f"{num(a) - num(b):+.4f}" if num(a) is not None and num(b) is not None
                                           else "-" for a, b in zip(_dice_values(i8), _dice_values(f16)))])
    cases = d.get("cases")
    train = int(cases * 0.8) if isinstance(cases, int) else None
    split = "" if train is None else f" ({train} training / {cases - train} validation cases)"
    zero = bool(i8 and f16 and num(i8.get("mean_dice")) == 0 and num(f16.get("mean_dice")) == 0)
    return fill("cache_dice", cases=cases, split=split, backbone=d.get("backbone", "tiny"),
                epochs=d.get("epochs", "?"), iterations=d.get("iterations", "?"),
                table=standard_table(rows_cache_dice, d),
                detail=md_table(["cache", "pseudo Dice anterior", "pseudo Dice posterior", "volume Dice (grid mode)"],
                                detail),
                zero_volume_dice=" " + fill("cache_dice_zero") if zero else "")
