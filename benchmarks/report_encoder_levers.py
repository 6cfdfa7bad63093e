"""BENCHMARKS.md section of ``encoder_levers.py``: the encoder's ms per tile under each CPU lever, per batch."""
from __future__ import annotations

from typing import Dict, List, Tuple

from report import BY_NAME, Results, Row, fill, fmt_ms, md_table, not_measured, num, ratio, standard_table

CHANGES_NUMBERS = ("bf16", "int8")  # levers kept only if hippocampus Dice moves by less than 0.002 (the rule)


def _by(d: dict) -> Dict[Tuple[str, int], dict]:
    return {(r.get("lever"), r.get("batch")): r for r in d.get("results", [])}


def rows_encoder_levers(d: dict) -> List[Row]:
    """Each lever against the baseline at the same batch; the largest batch against batch 1 (baseline)."""
    meta, by = d.get("meta", {}), _by(d)
    cmd = d.get("command") or BY_NAME["encoder_levers"].command()
    name = f"{meta.get('backbone', '?')} {meta.get('image_size', '?')} px"
    batches = sorted({b for _, b in by if isinstance(b, int)})
    out = []
    if len(batches) > 1 and ("baseline", 1) in by:
        top, one = by.get(("baseline", batches[-1])), by[("baseline", 1)]
        if top:
            out.append(Row(f"encoder ms / tile, {name}, {batches[-1]} tiles per call vs 1",
                           fmt_ms(top.get("ms_per_tile")), f"{fmt_ms(one.get('ms_per_tile'))} (1 per call)",
                           ratio(top.get("ms_per_tile"), one.get("ms_per_tile")), "-", cmd))
    for (lever, b), r in by.items():
        base = by.get(("baseline", b))
        if lever == "baseline" or not base:
            continue
        out.append(Row(f"encoder ms / tile, {name}, {lever}, batch {b}", fmt_ms(r.get("ms_per_tile")),
                       f"{fmt_ms(base.get('ms_per_tile'))} (baseline)", ratio(r.get("ms_per_tile"),
                                                                                base.get("ms_per_tile")), "-", cmd))
    return out


def _batch_scaling(res: Results) -> str:
    """The baseline's ms per tile at each batch (``encoder_batches``): what ``desam_predict`` takes per call on a
    CPU."""
    d = res.get("encoder_batches")
    if d is None:
        return not_measured("encoder_batches")
    by = _by(d)
    one = by.get(("baseline", 1), {}).get("ms_per_tile")
    rows = [[b, fmt_ms(r.get("ms_per_tile")), "-" if ratio(r.get("ms_per_tile"), one) is None
             else f"{ratio(r.get('ms_per_tile'), one):.2f}x"]
            for (lever, b), r in sorted(by.items(), key=lambda kv: kv[0][1])
            if lever == "baseline"]
    best = min(rows, key=lambda r: num(by[("baseline", r[0])].get("ms_per_tile")) or float("inf"))[0] if rows else None
    return fill("encoder_batches", command=d.get("command", BY_NAME["encoder_batches"].command()), best=best,
                table=md_table(["tiles per call", "ms / tile", "vs 1 per call"], rows))


def section_encoder_levers(res: Results) -> str:
    d = res.get("encoder_levers")
    if d is None:
        return not_measured("encoder_levers") + "\n\n" + _batch_scaling(res)
    meta, by = d.get("meta", {}), _by(d)
    detail = []
    for (lever, b), r in by.items():
        diff = num(r.get("max_abs_diff_vs_baseline"))
        detail.append([lever, b, fmt_ms(r.get("ms_per_tile")), "-" if diff is None else f"{diff:.2g}",
                       f"{num(r.get('warmup_s')) or 0:.1f} s"])
    top = 1 if any(b == 1 for _, b in by) else max((b for _, b in by if isinstance(b, int)), default=None)
    faster = [lever for (lever, b), r in by.items() if b == top and lever != "baseline"
              and (ratio(r.get("ms_per_tile"), by.get(("baseline", b), {}).get("ms_per_tile")) or 1) < 0.9]
    verdict = (f"At {top} tile(s) per call (a CPU's choice, below), {', '.join(faster)} take at least 10% off the "
               "baseline" if faster else f"At {top} tile(s) per call no lever takes 10% off the baseline")
    pending = [lv for lv in faster if lv in CHANGES_NUMBERS]
    if pending:
        verdict += (f"; {', '.join(pending)} {'changes' if len(pending) == 1 else 'change'} the features (last "
                    "column) and count only once hippocampus Dice moves by less than 0.002")
    return fill("encoder_levers", **{k: meta.get(k, "?") for k in ("backbone", "image_size", "rounds", "threads",
                                                                   "torch")},
                table=standard_table(rows_encoder_levers, d), verdict=verdict, batches=_batch_scaling(res),
                detail=md_table(["lever", "batch", "ms / tile", "max abs diff of the neck features vs baseline",
                                 "warm-up"], detail))
