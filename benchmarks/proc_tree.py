"""Run a command and measure its wall time and the peak resident memory of its whole process tree.

nnU-Net and desam-nnu both work in spawned worker processes, so the peak of the summed RSS of the
command and all its descendants (sampled from /proc every 0.1 s) is the honest figure; the largest
single process's peak (getrusage of children) is reported beside it. Linux only; no psutil needed.
"""
import os
import resource
import subprocess
import threading
import time
from typing import Dict, List, Optional


def _rss_and_parents() -> Dict[int, tuple]:
    out = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(entry)] = (int(fields[1]), int(fields[21]) * page)  # ppid, rss pages -> bytes
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_rss(root: int) -> int:
    procs = _rss_and_parents()
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            total += procs[pid][1]
        stack.extend(children.get(pid, []))
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
