"""The one layout of every results file in ``benchmarks/results/``, and its one merge rule.

A file is ``{"runs": [run, ...]}``, oldest first. Each invocation of a benchmark script adds one run:
its own results plus ``args`` (its command line without ``--out``/``--work``), ``command`` and
``date``. A run is keyed by its arguments and date: running the same command again on the same day
replaces that day's run; anything else is added. Readers see :func:`combined`: the runs folded
oldest to newest, a newer run's fields replacing an older one's, except the fields a benchmark
names in its ``merge`` (``report.Benchmark``), which gather rows across runs, newest row per key.
So several invocations (one backbone, one budget, one input size each) build one table.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# field -> the row fields that key a list's rows; () for a dict field, merged by its own keys
Merge = Tuple[Tuple[str, Tuple[str, ...]], ...]
UNRECORDED = ("--out", "--work", "--race-work")  # where a run read or wrote is not what it measured


def invocation_args(argv: Optional[Sequence[str]] = None) -> List[str]:
    """The command line's arguments without the ones that only say where to write."""
    argv, out = list(sys.argv[1:] if argv is None else argv), []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in UNRECORDED:
            skip = True
        elif not a.startswith(tuple(f"{u}=" for u in UNRECORDED)):
            out.append(a)
    return out


def read_runs(path: Path) -> List[dict]:
    """The runs of a results file ([] when there is none); ValueError naming the file if it is not this layout."""
    if not Path(path).is_file():
        return []
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: not a results file (expected {{\"runs\": [...]}})")
    return data["runs"]


def record_run(path: Path, results: dict, script: str, argv: Optional[Sequence[str]] = None,
               date: Optional[str] = None) -> List[dict]:
    """Add the results of ``benchmarks/<script> <argv>`` (default: this process's arguments) to the file at
    ``path`` as one run, atomically; all its runs."""
    args = invocation_args(argv)
    run = {**results, "args": args, "command": " ".join(["python", f"benchmarks/{script}", *args]),
           "date": date or datetime.date.today().isoformat()}
    runs = [r for r in read_runs(path) if (r.get("args"), r.get("date")) != (run["args"], run["date"])] + [run]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    os.replace(tmp, path)
    return runs


def combined(runs: Sequence[dict], merge: Merge = ()) -> dict:
    """The runs folded oldest to newest (see the module docstring); {} for no runs."""
    rules: Dict[str, Tuple[str, ...]] = dict(merge)
    view: dict = {}
    for run in runs:
        for field, value in run.items():
            key = rules.get(field)
            if key is None or field not in view:
                view[field] = value if key is None else _rows(value, key)
            else:
                view[field] = {**view[field], **_rows(value, key)}
    return {f: list(v.values()) if rules.get(f) else v for f, v in view.items()}


def _rows(value, key: Tuple[str, ...]) -> dict:
    """A merged field's rows by key: a dict as it is, a list by its rows' ``key`` fields."""
    if not key:
        return dict(value)
    return {tuple(row.get(k) for k in key): row for row in value}
