"""What every section of BENCHMARKS.md shares: where results live, the benchmark registry, number
formatting, tables and the results loader (``run_all.py`` renders the document from these)."""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from results_file import Merge, combined, read_runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SECTIONS = HERE / "sections"  # each section's prose: a Markdown template with $placeholders
OUT = REPO / "BENCHMARKS.md"
MIB = 2 ** 20
CLASSES = {"1": "anterior", "2": "posterior"}  # hippocampus labels


# ------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    args: Tuple[str, ...]
    quick: Tuple[str, ...]
    json: str
    more: Tuple[Tuple[str, ...], ...] = ()  # further full-mode invocations, merged into the same JSON by the script
    needs_gpu: bool = False  # its full run needs a CUDA device (skipped, and said so, on a machine without one)
    merge: Merge = ()  # fields that gather rows across runs (results_file.combined); the rest: the newest run's

    def argv(self, quick: bool = False) -> List[str]:
        return [f"benchmarks/{self.script}", *(self.quick if quick else self.args)]

    def all_argv(self, quick: bool = False) -> List[List[str]]:
        return [self.argv(quick)] + ([] if quick else [[f"benchmarks/{self.script}", *a] for a in self.more])

    def command(self, quick: bool = False) -> str:
        return " ".join(["python", *self.argv(quick)])


BENCHMARKS: List[Benchmark] = [
    Benchmark("plan_preprocess", "plan_preprocess.py", ("-np", "2", "--repeats", "2"), ("-np", "2", "--repeats", "1"),
              "plan_preprocess.json"),
    Benchmark("decoder", "decoder.py", (), ("--backbones", "tiny", "--repeats", "1", "--loop-prompts", "3"),
              "decoder.json"),
    Benchmark("train", "train.py", ("--cases", "20", "--iterations", "20"),
              ("--backbones", "tiny", "--cases", "10", "--iterations", "5"), "train.json",
              merge=(("rows", ("backbone", "mode", "dtype")), ("summary", ("backbone",)))),
    Benchmark("prim_attention", "prim_attention.py", ("--configs", "medsam_lite:128", "tiny:256", "vit_b:256"),
              ("--configs", "tiny:128", "--rounds", "1"), "prim_attention.json"),
    Benchmark("encoder", "encoder.py", ("--repeats", "5"),
              ("--configs", "medsam_lite:128", "tiny:256", "--repeats", "1"),
              "encoder.json"),
    Benchmark("encoder_levers", "encoder_levers.py",
              ("--batches", "1", "4", "--levers", "baseline", "threads1", "channels_last", "compile", "int8", "bf16",
               "onnxruntime", "--rounds", "3"),
              ("--batches", "1", "4", "--rounds", "1", "--levers", "baseline", "channels_last"), "encoder_levers.json"),
    Benchmark("encoder_batches", "encoder_levers.py", ("--levers", "baseline", "--batches", "1", "2", "4", "8", "32",
                                                       "--rounds", "3"),
              ("--levers", "baseline", "--batches", "1", "2", "--rounds", "1"), "encoder_batches.json"),
    Benchmark("cache_dice", "cache_dice.py",
              ("--backbone", "tiny", "--cases", "40", "--epochs", "4", "--iterations", "50"),
              ("--backbone", "tiny", "--cases", "10", "--epochs", "1", "--iterations", "5"), "cache_dice.json"),
    Benchmark("predict", "predict.py", ("--backbones", "tiny", "vit_b", "--cases", "3", "--ct"),
              ("--backbones", "tiny", "--cases", "1"), "predict.json", merge=(("measured", ()),)),
    Benchmark("ensemble", "ensemble.py", ("--cases", "2"), ("--backbone", "tiny", "--cases", "1"), "ensemble.json"),
    Benchmark("litemedsam_box", "litemedsam_box.py", ("--cases", "100", "--sizes", "128"),
              ("--sizes", "128", "256", "--cases", "10"), "litemedsam_box.json",
              more=(("--cases", "100", "--sizes", "256", "--volumes", "8"),), merge=(("results", ()),)),
    # one race of both tools per budget, one after the other (hours: 2 x 3.5 h of training on 2 cores); the quick
    # settings still train one whole epoch each (no shortened schedules: that was the unfair part)
    Benchmark("dice_budget", "dice_budget.py", ("--minutes", "30", "60", "120"),
              ("--cases", "10", "--minutes", "1", "--runs", "nnunet", "desam", "dbsam"),
              "dice_budget.json", merge=(("rows", ()), ("earlier", ()))),
    # the race's models with a simulated user's boxes (dice_budget.py's kept folder trees: run it first)
    Benchmark("prompted_boxes", "prompted_boxes.py", ("--minutes", "30"),
              ("--minutes", "1", "--cases", "10", "--volumes", "2", "--vit-slices", "0"), "prompted_boxes.json"),
    # the race's models (dice_budget.py's kept folder trees) under simulated scanner shifts
    Benchmark("robustness", "robustness.py", ("--minutes", "30", "--cases", "10"),
              ("--minutes", "1", "--race-cases", "10", "--cases", "2", "--levels", "1", "--shifts", "blur"),
              "robustness.json"),
    # the race's DeSAM models (dice_budget.py's kept trees) with and without the inexact prediction options
    Benchmark("prediction_options", "prediction_options.py", ("--options", "bf16", "--cases", "40"),
              ("--options", "coarse_grid", "--minutes", "1", "--race-cases", "10", "--cases", "1"),
              "prediction_options.json",
              more=(("--options", "coarse_grid", "--cases", "10"), ("--options", "onnxruntime", "--cases", "20")),
              merge=(("rows", ("option", "setting")),)),
    # glibc's malloc keeping freed memory against its own settings, each arm a fresh process (the race's DeSAM models)
    Benchmark("allocator", "allocator.py", ("--cases", "5", "--rounds", "2"),
              ("--settings", "box", "--minutes", "1", "--race-cases", "10", "--cases", "1", "--rounds", "1"),
              "allocator.json", merge=(("rows", ("setting",)),)),
    Benchmark("gpu_check", "gpu_check.py", (),
              ("--device", "cpu", "--runs", "desam:tiny", "--cases", "5", "--iterations", "2"), "gpu_check.json",
              needs_gpu=True),
]
BY_NAME: Dict[str, Benchmark] = {b.name: b for b in BENCHMARKS}


# ------------------------------------------------------------------------------------------ formatting
def num(x) -> Optional[float]:
    """x as a finite float, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def ratio(ours, ref) -> Optional[float]:
    a, b = num(ours), num(ref)
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}x" if abs(r) >= 100 else f"{r:.3g}x"


def fmt_s(s) -> str:
    s = num(s)
    return "-" if s is None else (f"{s:.0f} s" if s >= 100 else f"{s:.3g} s")


def fmt_ms(ms) -> str:
    ms = num(ms)
    return "-" if ms is None else (f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms")


def fmt_mib(m) -> str:
    m = num(m)
    return "-" if m is None else f"{m:.0f} MiB"


def fmt_dice(d, digits: int = 3) -> str:
    d = num(d)
    return "-" if d is None else f"{d:.{digits}f}"


def target_text(value: Optional[float], limit: float, unit: str = "x") -> str:
    text = f"<= {limit:g}{unit}"
    return text if value is None else f"{text}, {'met' if value <= limit else 'missed'}"


def clean_command(cmd: Optional[str]) -> str:
    """A command as it would be typed in the repository root: no absolute repo paths, no --out."""
    if not cmd:
        return ""
    cmd = cmd.replace(str(REPO) + "/", "")
    cmd = re.sub(r"\s--(out|work)[ =]\S+", "", cmd)
    return re.sub(r"^\S*python3?(\.\d+)?\s", "python ", cmd)


def code(cmd: str) -> str:
    return f"`{cmd}`" if cmd else "-"


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Row:
    """One line of an area's standard table; ``ratio`` is ours / reference."""
    measure: str
    ours: str
    reference: str
    ratio: Optional[float] = None
    target: str = "-"
    command: str = ""


def gpu_section(data) -> Optional[Tuple[str, dict]]:
    g = data.get("gpu") if isinstance(data, dict) else None
    if not isinstance(g, dict):
        return None
    return str(g.get("device") or g.get("name") or "GPU"), g


def standard_table(rows_fn: Callable[[dict], List[Row]], data: dict) -> str:
    """The standard table of ``rows_fn(data)``; with a GPU column where ``data`` has a ``gpu`` section."""
    rows = rows_fn(data)
    header = ["measure", "ours", "reference", "ratio", "target", "command"]
    gpu = gpu_section(data)
    gpu_cells: Dict[str, str] = {}
    if gpu:
        header.append(f"GPU ({gpu[0]})")
        for r in rows_fn(gpu[1]):
            gpu_cells[r.measure] = f"{r.ours} vs {r.reference} ({fmt_ratio(r.ratio)})"
    body = []
    for r in rows:
        line = [r.measure, r.ours, r.reference, fmt_ratio(r.ratio), r.target or "-", code(clean_command(r.command))]
        if gpu:
            line.append(gpu_cells.get(r.measure, "-"))
        body.append(line)
    return md_table(header, body) if body else "(no rows in the results)"


# ------------------------------------------------------------------------------------------ results
class Results:
    """The results of one folder, each file read once and seen as its runs combined (``results_file``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: Dict[str, Optional[dict]] = {}
        self.problems: List[str] = []

    def get(self, name: str) -> Optional[dict]:
        if name not in self._cache:
            b, data = BY_NAME[name], None
            try:
                data = combined(read_runs(self.folder / b.json), b.merge) or None
            except (OSError, ValueError) as e:
                self.problems.append(f"{self.folder / b.json}: unreadable ({e})")
            self._cache[name] = data
        return self._cache[name]


def not_measured(*names: str) -> str:
    return "\n".join(f"not measured yet: `{BY_NAME[n].command()}`" for n in names)


def fill(template: str, **values) -> str:
    """``benchmarks/sections/<template>.md`` with its ``$placeholders`` filled (``string.Template``; ``$$`` is a
    dollar); a placeholder without a value is an error, so prose and code cannot drift apart unseen."""
    text = (SECTIONS / f"{template}.md").read_text()
    return string.Template(text).substitute(**values).rstrip("\n")
