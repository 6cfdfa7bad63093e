"""benchmarks/proc_tree.py: the peak memory of a whole process tree (psutil), as the benchmarks report it."""
import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from proc_tree import tree_rss  # noqa: E402

MIB = 2 ** 20
# a parent holding 150 MiB starts a child holding 150 MiB; both alive together for a second
CHILD = "b = bytearray(150 * 2 ** 20); import time; time.sleep(1.5)"
PARENT = f"import subprocess, sys; a = bytearray(150 * 2 ** 20); subprocess.run([sys.executable, '-c', {CHILD!r}])"
# measured from a fresh process, as the benchmarks do: getrusage's children figure is per process
MEASURE = f"import json, sys; from proc_tree import measure; print(json.dumps(measure([sys.executable, '-c', {PARENT!r}])))"


def test_the_tree_peak_counts_parent_and_child_together():
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=BENCHMARKS, capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["returncode"] == 0 and r["seconds"] >= 1.5
    assert r["peak_tree_rss"] >= 300 * MIB  # both bytearrays at once
    assert 150 * MIB <= r["peak_process_rss"] < r["peak_tree_rss"]  # the largest single process holds one


def test_an_ended_process_has_no_tree():
    assert tree_rss(2 ** 22 + 12345) == 0  # above Linux's default pid_max: no such process
