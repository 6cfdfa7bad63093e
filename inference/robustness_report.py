"""What a robustness study says: mean Dice per model, shift and level, the drop from clean, ROOD-MRI's
weighted summary, as a table and as one plot panel per shift."""
import math
from typing import Dict, List

import numpy as np

from desam_nnu.atomic import atomic_path

TABLE_LEVELS = (1, 3, 5)
WEIGHT_BASE = 2 / 3  # ROOD-MRI: level l weighs (2/3)^l, clean (l = 0) weighs 1


def mean_dice(per_case: Dict[str, Dict[str, float]]) -> float:
    """nnU-Net's foreground mean: each class averaged over the cases (NaN cases left out), then the classes."""
    classes = sorted({k for d in per_case.values() for k in d})
    per_class = [np.nanmean([d[k] for d in per_case.values() if k in d]) for k in classes]
    return float(np.mean(per_class)) if per_class else math.nan


def weighted_summary(by_level: Dict[int, float]) -> float:
    """ROOD-MRI's summary: the mean of clean and the levels, level l weighted (2/3)^l (only the levels run)."""
    weights = {lv: WEIGHT_BASE ** lv for lv in by_level}
    return sum(weights[lv] * by_level[lv] for lv in by_level) / sum(weights.values())


def summarise(result: dict) -> Dict[str, Dict[str, dict]]:
    """Per model and shift: Dice at each level (0 = clean), the drop from clean, the weighted summary."""
    out: Dict[str, Dict[str, dict]] = {}
    for model, sets in result["dice"].items():
        clean = mean_dice(sets["clean"])
        out[model] = {}
        for shift in result["shifts"]:
            by_level = {0: clean, **{lv: mean_dice(sets[f"{shift}_L{lv}"]) for lv in result["levels"]}}
            out[model][shift] = {"dice": {str(k): v for k, v in by_level.items()},
                                 "drop": {str(lv): clean - by_level[lv] for lv in result["levels"]},
                                 "weighted": weighted_summary(by_level)}
    return out


def table_rows(result: dict) -> List[List[str]]:
    """Header and rows: model, shift, clean Dice, drop at levels 1, 3 and 5 (those run), weighted summary."""
    levels = [lv for lv in TABLE_LEVELS if lv in result["levels"]]
    rows = [["model", "shift", "clean"] + [f"drop L{lv}" for lv in levels] + ["weighted"]]
    for model, shifts in result["summary"].items():
        for shift, s in shifts.items():
            rows.append([model, shift, f"{s['dice']['0']:.3f}"] + [f"{s['drop'][str(lv)]:+.3f}" for lv in levels]
                        + [f"{s['weighted']:.3f}"])
    return rows


def format_table(result: dict) -> str:
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def write_plot(result: dict, path: str, columns: int = 4) -> str:
    """One panel per shift: mean Dice against level (0 = clean), one line per model; a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(result["shifts"])
    rows = math.ceil(len(shifts) / columns)
    cols = min(columns, len(shifts))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, shift in zip(axes.flat, shifts):
        for model, s in result["summary"].items():
            levels = sorted(int(k) for k in s[shift]["dice"])
            ax.plot(levels, [s[shift]["dice"][str(lv)] for lv in levels], marker="o", label=model)
        ax.set_title(shift.replace("_", " "), fontsize=10)
        ax.set_xticks(range(0, max(result["levels"]) + 1))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shifts):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean Dice")
    for ax in axes[-1, :]:
        ax.set_xlabel("severity (0 = clean)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
