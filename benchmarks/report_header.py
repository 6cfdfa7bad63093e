"""The head of BENCHMARKS.md: where the results were measured (machines and GPUs, from the results themselves)
and with which torch and nnU-Net it was rendered."""
from __future__ import annotations

import importlib.metadata
from typing import Dict, List

from report import BENCHMARKS, Results, fill, gpu_section
from report_dice_budget import dice_rows
from report_gpu_check import gpu_device
from report_predict import predict_runs


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
        elif b.name == "gpu_check":  # a GPU machine's figures, in a section of their own
            gpus.setdefault(gpu_device(d), []).append(b.name)
            continue
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
           "GPU figures: " + "; ".join(f"{dev} ({', '.join(n)})" for dev, n in gpus.items())
           + "; every other figure is from the CPU.")
    return fill("header", where=where, torch=_version("torch"), nnunetv2=_version("nnunetv2"), gpu=gpu)
