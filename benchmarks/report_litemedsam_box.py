"""BENCHMARKS.md section of ``litemedsam_box.py``: pretrained LiteMedSAM with a box per slice from the ground truth."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from report import BY_NAME, Results, Row, fill, fmt_dice, fmt_s, md_table, not_measured, num, ratio, standard_table


def _lite_sizes(d: dict) -> List[str]:
    return sorted((k for k, v in d.get("results", {}).items() if isinstance(v, dict)),
                  key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _lite_volumes(d: dict, size: str) -> Optional[int]:
    """Validation volumes measured at ``size``."""
    return len(d.get("results", {}).get(size, {}).get("per_case", {})) or None


def _lite_common_mean(d: dict, sizes: Sequence[str]) -> Tuple[Dict[str, Optional[float]], int]:
    """Mean Dice per size over the volumes every size in ``sizes`` has (per-case results), and their count."""
    per = [d["results"][s]["per_case"] for s in sizes]
    common = sorted(set.intersection(*(set(p) for p in per)))
    means = {}
    for s, p in zip(sizes, per):
        values = [v for c in common for k, v in p[c].items() if num(v) is not None and v == v]
        means[s] = sum(values) / len(values) if values else None
    return means, len(common)


def rows_lite(d: dict) -> List[Row]:
    """Each size's mean Dice and seconds per volume against the reference size (256 px, else the largest)."""
    b = BY_NAME["litemedsam_box"]
    cmd = (d.get("command") if len(d.get("results", {})) < 2
           else "; ".join(" ".join(["python", *a]) for a in b.all_argv()))
    res, sizes = d.get("results", {}), _lite_sizes(d)
    if not sizes:
        return []
    ref_size = "256" if "256" in sizes else sizes[-1]
    ref = res[ref_size]

    def row(measure: str, ours, theirs, fmt: Callable, other: bool) -> Row:
        """``ours`` against the reference size's ``theirs`` (a size alone: no reference, no ratio)."""
        return Row(measure, fmt(ours), f"{fmt(theirs)} ({ref_size} px)" if other else "-",
                   ratio(ours, theirs) if other else None, "-", cmd)

    out = []
    for s in sizes:
        r = res[s]
        if s == ref_size and len(sizes) > 1:
            continue
        other = s != ref_size
        vs = f" vs {ref_size} px" if other else ""
        means, n = _lite_common_mean(d, [s, ref_size]) if other else ({s: r.get("dice", {}).get("mean")}, 0)
        on = f" (the {n} volumes both have)" if n else ""
        out += [row(f"mean Dice, box per slice, {s} px{vs}{on}", means[s], means.get(ref_size), fmt_dice, other),
                row(f"s / volume, {s} px{vs}", r.get("s_per_volume"), ref.get("s_per_volume"), fmt_s, other)]
    return out


def _lite_quick(d: dict) -> str:
    """A smaller check of several sizes on other volumes (the split of fewer cases), when the file has one."""
    q = d.get("quick_check")
    if not isinstance(q, dict) or not q.get("results"):
        return ""
    sizes = sorted(q["results"], key=int)
    parts = [f"{s} px: mean Dice {fmt_dice(q['results'][s]['dice'].get('mean'))}, "
             f"{fmt_s(q['results'][s].get('s_per_volume'))} / volume" for s in sizes]
    return "\n\n" + fill("litemedsam_box_quick", volumes=q.get("volumes", "?"), split_cases=q.get("split_cases", "?"),
                         note=q.get("note", ""), sizes="; ".join(parts), command=q.get("command", ""))


def section_lite(res: Results) -> str:
    d = res.get("litemedsam_box")
    if d is None:
        return not_measured("litemedsam_box")
    results = d.get("results", {})
    detail = [[f"{s} px", str(_lite_volumes(d, s)),
               *(fmt_dice(results[s].get("dice", {}).get(c)) for c in ("1", "2", "mean")),
               fmt_s(results[s].get("s_per_volume"))] for s in _lite_sizes(d)]
    return fill("litemedsam_box", split_cases=d.get("split_cases", d.get("cases", "?")), axis=d.get("axis", 0),
                threads=d.get("threads", "?"), table=standard_table(rows_lite, d),
                detail=md_table(["input", "volumes", "Dice anterior", "Dice posterior", "mean Dice", "s / volume"],
                                detail)) + _lite_quick(d)
