"""BENCHMARKS.md section of ``dice_budget.py``: validation Dice of each tool after the same wall-clock training
budget; its table and plot."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from report import Results, clean_command, code, fill, fmt_dice, fmt_ratio, fmt_s, md_table, not_measured, num, ratio
from report_litemedsam_box import _lite_sizes, _lite_volumes


TOOLS = ("nnunet", "desam", "dapsam", "dbsam", "masksam")  # nnU-Net's 2D U-Net, then the SAM families beside it
FAMILY_NAMES = {"desam": "DeSAM", "dapsam": "DAPSAM", "dbsam": "DB-SAM", "masksam": "MaskSAM"}


def dice_rows(d: dict) -> Tuple[Dict[str, dict], int]:
    """The race's rows of dice_budget.json by key, and how many ``earlier`` rows it also holds.

    The earlier rows (a CPU-time budget, nnU-Net in 5-iteration epochs with its augmentation in-process,
    DeSAM with non-default flags) are not shown: they did not race each tool as its users run it."""
    return d.get("rows") or {}, len(d.get("earlier") or {})


def _tool(key: str, row: dict) -> str:
    return row.get("tool") or ("nnunet" if key.startswith("nnunet") else "desam")


def _name(key: str, row: dict) -> str:
    """A row's tool and configuration as the tables and the plot name it."""
    tool = _tool(key, row)
    return "nnU-Net 2D" if tool == "nnunet" else f"{FAMILY_NAMES[tool]} {_desam_config(row)}"


def _dice_cell(row: Optional[dict], key: str = "dice") -> str:
    d = (row or {}).get(key)
    return " / ".join(fmt_dice(d.get(c)) for c in ("1", "2", "mean")) if isinstance(d, dict) else "-"


def _iterations(row: Optional[dict]) -> str:
    if not row or row.get("iterations") is None:
        return "-"
    epochs, per_epoch, done = row.get("epochs"), row.get("iterations_per_epoch"), row["iterations"]
    if isinstance(epochs, int) and isinstance(per_epoch, int) and 0 < done - (epochs - 1) * per_epoch < per_epoch:
        return f"{done} ({epochs - 1} x {per_epoch} + {done - (epochs - 1) * per_epoch})"  # a shortened last epoch
    return f"{done} ({epochs if epochs is not None else '?'} x {per_epoch if per_epoch is not None else '?'})"


def _minutes(seconds) -> str:
    s = num(seconds)
    return "-" if s is None else f"{s / 60:.1f} min"


def _pair(a: Optional[dict], b: Optional[dict], key: str, fmt: Callable) -> str:
    return " / ".join(fmt(r.get(key)) if r else "-" for r in (a, b))


def _desam_config(row: Optional[dict]) -> str:
    if not row:
        return "-"
    size = f" {row['image_size']} px" if row.get("image_size") else ""
    which = "default" if row.get("backbone_flag") is None else f"--backbone {row['backbone_flag']}"
    return f"{which} ({row.get('backbone', '?')}{size})"


def _mean(row: Optional[dict]) -> Optional[float]:
    return num(((row or {}).get("dice") or {}).get("mean"))


def curve_points(rows: Dict[str, dict]) -> Dict[str, Dict[object, List[Tuple[float, float]]]]:
    """(minutes from the setup to the last step, mean Dice) per run, grouped by tool and schedule, on the largest
    case count raced. The setup counts because a SAM model's budget includes its embedding cache build."""
    cases = max((r.get("cases") or 0 for r in rows.values()), default=0)
    lines: Dict[str, Dict[object, List[Tuple[float, float]]]] = {}
    for key, r in rows.items():
        wall, mean = num(r.get("train_wall_s")), _mean(r)
        if r.get("cases") == cases and wall is not None and mean is not None:
            schedule = r.get("trainer") or r.get("minutes")
            minutes = (wall + (num(r.get("setup_s")) or 0.0)) / 60
            lines.setdefault(_name(key, r), {}).setdefault(schedule, []).append((minutes, mean))
    return lines


def plot_curve(rows: Dict[str, dict], path: Path) -> Optional[Path]:
    """Mean Dice (after each tool's choice) against its wall minutes (``curve_points``), a point per run; a PNG
    at ``path`` (None when no row has both). A tool's line (and DeSAM configuration's) joins the mean of its runs
    per schedule: nnU-Net's trainer, whose one epoch fits both 30 and 60 minutes (two runs of one schedule, not a
    curve), or a SAM model's budget."""
    cases = max((r.get("cases") or 0 for r in rows.values()), default=0)
    lines = curve_points(rows)
    if not lines:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, schedules in sorted(lines.items()):
        means = sorted((sum(x for x, _ in runs) / len(runs), sum(y for _, y in runs) / len(runs))
                       for runs in schedules.values())
        (line,) = ax.plot(*zip(*means), marker="x", label=name)
        ax.scatter(*zip(*[p for runs in schedules.values() for p in runs]), color=line.get_color(), s=20, zorder=3)
    ax.set_xlabel("wall time from setup to the last training step (min)")
    ax.set_ylabel(f"fold-0 validation mean Dice ({cases} cases)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from desam_nnu.atomic import atomic_path
    with atomic_path(str(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


def budget_table(rows: Dict[str, dict]) -> Tuple[List[str], List[List[str]]]:
    """Header and lines: one line per budget and case count (and SAM family and configuration), nnU-Net 2D and
    the SAM model side by side: Dice per class and mean (after each tool's own choice), iterations, seconds per
    iteration, training wall, planning and final validation seconds."""
    groups: Dict[Tuple[float, int], Dict[str, List[dict]]] = {}
    for key, row in rows.items():
        g = groups.setdefault((num(row.get("minutes")) or 0.0, row.get("cases") or 0), {t: [] for t in TOOLS})
        g.setdefault(_tool(key, row), []).append(row)
    header = ["budget (wall)", "cases", "nnU-Net 2D Dice 1 / 2 / mean", "nnU-Net iterations", "nnU-Net s / it",
              "SAM model (DeSAM unless named)", "SAM Dice 1 / 2 / mean", "SAM iterations", "SAM s / it",
              "SAM / nnU-Net mean Dice", "training wall nnU-Net / SAM", "planning nnU-Net / SAM",
              "final validation nnU-Net / SAM"]
    body = []
    for (minutes, cases), g in sorted(groups.items()):
        nn = g["nnunet"][0] if g["nnunet"] else None
        sams = [(t, r) for t in TOOLS[1:] for r in sorted(g[t], key=lambda r: (r.get("backbone_flag") is not None,
                                                                               str(r.get("backbone_flag"))))]
        for tool, ds in sams or [("desam", None)]:
            volumes = ((nn or ds or {}).get("dice") or {}).get("cases")
            config = _desam_config(ds) if tool == "desam" else f"{FAMILY_NAMES[tool]} {_desam_config(ds)}"
            body.append([f"{minutes:g} min", f"{cases}" + (f" ({volumes} val.)" if volumes else ""), _dice_cell(nn),
                         _iterations(nn), fmt_s((nn or {}).get("s_per_iteration")), config, _dice_cell(ds),
                         _iterations(ds), fmt_s((ds or {}).get("s_per_iteration")),
                         fmt_ratio(ratio(_mean(ds), _mean(nn))), _pair(nn, ds, "train_wall_s", _minutes),
                         _pair(nn, ds, "planning_s", fmt_s), _pair(nn, ds, "validation_s", fmt_s)])
    return header, body


def _schedule(row: dict) -> str:
    batch = f", batch {row['batch_size']}" if row.get("batch_size") else ""
    if row.get("tool") == "nnunet":
        return (f"`{row.get('trainer', '?')}`: {row.get('planned_epochs', '?')} epoch(s) x "
                f"{row.get('iterations_per_epoch', '?')} it{batch}")
    o = row.get("options") if isinstance(row.get("options"), dict) else {}
    feats = "train encoder" if o.get("train_encoder") else ("cache" if o.get("use_cache") else "online encoding")
    epochs = "epochs until the budget" if o.get("time_budget") else f"{o.get('num_epochs', '?')} epochs"
    prompts = (f"{o['prompt_mode']} prompts" if o.get("prompt_mode") else "box prompts, the whole tile's without a "
               "prompts file" if o.get("family") == "dbsam" else "prompt-free")
    return f"{epochs}, {o.get('num_iterations_per_epoch', '?')} it each{batch}, {prompts}, {feats}"


def _choice(row: dict) -> str:
    fb = row.get("find_best") if isinstance(row.get("find_best"), dict) else {}
    if row.get("tool") == "dapsam" and not fb:  # raced before prompt-free models had their postprocessing chosen
        return "nothing to choose (prompt-free, no postprocessing)"
    pp = ", largest component" if row.get("postprocessing") else ", no postprocessing"
    what = "prompt-free" if fb and "prompts" in fb and fb["prompts"] is None else \
        f"prompts {fb['label']}" if fb.get("label") else ""
    return (what + pp).lstrip(", ") + f" ({fmt_s(row.get('find_best_s'))})"


def _details(rows: Dict[str, dict]) -> str:
    table = []
    for key in sorted(rows, key=lambda k: (num(rows[k].get("minutes")) or 0.0, rows[k].get("cases") or 0,
                                           _tool(k, rows[k]) != "nnunet", k)):
        r = dict(rows[key], tool=_tool(key, rows[key]))
        name = _name(key, r)
        budget_s, wall = num(r.get("budget_s")), num(r.get("train_wall_s"))
        share = f" ({wall / budget_s:.0%})" if wall is not None and budget_s else ""
        final, chosen = _mean({"dice": r.get("dice_final_validation")}), _mean(r)
        table.append([name, f"{num(r.get('minutes')) or 0:g} min, {r.get('cases', '?')} cases", _schedule(r),
                      _minutes(wall) + share, fmt_s(r.get("setup_s")), fmt_s(r.get("validation_s")), _choice(r),
                      f"{fmt_dice(final)} -> {fmt_dice(chosen)}", r.get("budget_spent") or "-",
                      code((r.get("commands") or {}).get("train", ""))])
    return md_table(["row", "budget", "schedule", "training wall (of the budget)", "setup before the first step",
                     "final validation", "choice from the validation (its time)",
                     "mean Dice: final validation -> chosen", "budget line of the log", "training command"], table)


def _lite_reference(res: Results, rows: Dict[str, dict]) -> str:
    """A sentence on LiteMedSAM's box-per-slice reference, when it was measured on these rows' validation volumes
    (else empty)."""
    lite = res.get("litemedsam_box")
    if not lite:
        return ""
    volumes = {((r.get("dice") or {}).get("cases"), r.get("cases")) for r in rows.values()}
    split = lite.get("split_cases", lite.get("cases"))
    found = [(s, lite["results"][s]) for s in _lite_sizes(lite) if (_lite_volumes(lite, s), split) in volumes]
    if not found:
        return ""
    parts = [f"{fmt_dice((r.get('dice') or {}).get('mean'))} at {s} px" for s, r in found]
    return fill("dice_budget_lite", dice=", ".join(parts))


def section_dice(res: Results) -> str:
    d = res.get("dice_budget")
    if d is None:
        return not_measured("dice_budget")
    rows, dropped = dice_rows(d)
    old = [fill("dice_budget_earlier", dropped=dropped)] if dropped else []
    if not rows:
        return "\n\n".join([not_measured("dice_budget"), *old])
    parts = [fill("dice_budget", table=md_table(*budget_table(rows)), details=_details(rows))]
    if (res.folder / "dice_budget.png").is_file():
        parts.append(fill("dice_budget_plot"))
    predicted = [f"{_desam_config(r)}, {num(r.get('minutes')) or 0:g} min: mean Dice "
                 f"{fmt_dice(r['dice_default_predict'].get('mean'))}, {fmt_s(r.get('predict_s_per_volume_default'))}"
                 " / volume" for r in rows.values() if isinstance(r.get("dice_default_predict"), dict)]
    if predicted:
        parts.append(fill("dice_budget_predict", predicted="; ".join(predicted)))
    parts.append(_lite_reference(res, rows))
    if all((_mean(r) or 0) < 0.05 for r in rows.values()):
        parts.append(fill("dice_budget_untrained"))
    commands = sorted({clean_command(r.get("command")) for r in rows.values() if r.get("command")})
    if commands:
        parts.append("Reproduce: " + "; ".join(code(c) for c in commands) + ".")
    parts += old
    if d.get("note"):
        parts.append(f"Note from the results: {d['note']}.")
    return "\n\n".join(p for p in parts if p)
