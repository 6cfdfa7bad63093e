"""Child processes of the benchmarks: a command's wall time and the peak resident memory of its whole process
tree, and the ``--one`` protocol by which a script runs one measurement in a fresh process.

nnU-Net and desam-nnu both work in spawned worker processes, so the peak of the summed RSS of the
command and all its descendants (psutil, sampled every 0.1 s) is the honest figure; the largest
single process's peak (getrusage of children) is reported beside it.
"""
import json
import resource
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

import psutil


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of process ``root`` and all its descendants; 0 once it has exited."""
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:  # a worker that ended between listing and reading
            pass
    return total


def measure(cmd: List[str], env: Optional[dict] = None, log: Optional[str] = None) -> dict:
    """Run ``cmd``; returns wall seconds, peak tree RSS and peak single-process RSS (bytes), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = open(log, "w") if log else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    code = proc.wait()
    wall = time.perf_counter() - start
    t.join()
    if log:
        out.close()
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": wall, "peak_tree_rss": peak[0], "peak_process_rss": single if single > before * 1024 else None,
            "returncode": code}


# ------------------------------------------------------------------------------------------ child runs
RESULT = "RESULT "  # the line a benchmark's child process (``--one ...``) prints its result on


def serve_one(one: Optional[Sequence[str]], run: Callable[..., dict], *extra) -> bool:
    """In a child process (``--one A ... N``): print ``run(A, ..., int(N), *extra)`` for the parent; False in the
    parent (``one`` unset)."""
    if not one:
        return False
    print(RESULT + json.dumps(run(*one[:-1], int(one[-1]), *extra)))
    return True


def child_result(cmd: List[str], env: dict, what: str) -> dict:
    """Run a child process (``--one ...``) and read its result; exit naming ``what`` and the end of its stderr if
    it failed."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode or not line:
        sys.exit(f"error: {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[0][len(RESULT):])
