"""BENCHMARKS.md section of ``prompted_boxes.py``: Dice and seconds per volume with a simulated user's boxes, and
DB-SAM's cost on SAM's ViT-B."""
from __future__ import annotations

from report import CLASSES, Results, clean_command, code, fill, fmt_dice, fmt_s, md_table, not_measured

NAMES = {"desam": "DeSAM-medsam_lite, trained", "dbsam": "DB-SAM-medsam_lite, trained",
         "litemedsam": "LiteMedSAM, no training"}


def _repo_path(path: str) -> str:
    """A model folder under the repository's benchmarks/ as the repository names it."""
    return "benchmarks/" + path.split("/benchmarks/", 1)[1] if "/benchmarks/" in path else path


def section_prompted(res: Results) -> str:
    d = res.get("prompted_boxes")
    if d is None:
        return not_measured("prompted_boxes")
    rows = []
    for name, r in d.get("rows", {}).items():
        dice = r["dice"]
        rows.append([NAMES.get(name, name), *(fmt_dice(dice.get(c)) for c in CLASSES), fmt_dice(dice.get("mean")),
                     fmt_s(r.get("s_per_volume")), f"`{_repo_path(r.get('model', '-'))}`"])
    table = md_table(["model", *(f"Dice {c}" for c in CLASSES.values()), "mean Dice", "s / volume", "model folder"],
                     rows)
    vit = d.get("vit_b")
    vit_text = (f"DB-SAM on SAM's ViT-B at 1024 px with random weights (its cost, whatever the weights): "
                f"{fmt_s(vit['s_per_slice'])} per slice ({vit['slices']} slice(s), {vit['threads']} threads, "
                f"{vit['parameters_m']:.0f} M parameters) on this CPU."
                if vit else "DB-SAM-vit_b's cost: not measured.")
    return fill("prompted_boxes", volumes=len(d.get("cases", [])), minutes=f"{d.get('minutes', 30):g}",
                jitter=f"{d.get('jitter_mm', 5):g}", seed=d.get("seed", 0), table=table, vit=vit_text,
                command=code(clean_command(d.get("command"))))
