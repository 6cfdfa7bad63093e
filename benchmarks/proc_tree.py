"""Run a command and measure its wall time and the peak resident memory of its whole process tree.

nnU-Net and desam-nnu both work in spawned worker processes, so the peak of the summed RSS of the
command and all its descendants (psutil, sampled every 0.1 s) is the honest figure; the largest
single process's peak (getrusage of children) is reported beside it.
"""
import resource
import subprocess
import threading
import time
from typing import List, Optional

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
