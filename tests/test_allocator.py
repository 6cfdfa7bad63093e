"""desam_nnu/allocator.py: glibc's malloc keeps freed memory where CPU prediction starts, and DESAM_MALLOC=default
leaves glibc alone. The setting is process-wide, so each case runs in a fresh interpreter."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")

# A fresh process: optionally a CPU DeSAMPredictor (or the bare call), then allocate-fill-free an 85 MB tensor, as
# PRIM's image side over 81 grid prompts is, 12 times, counting the kernel's minor page faults of the last two rounds.
# The first rounds may grow the heap: torch's 64-byte-aligned allocations do not fit the hole a freed one leaves until
# a few holes have merged (6 rounds here).
PROBE = r"""
import json, resource, sys, torch
how = sys.argv[1]
if how == "predictor":
    from desam_nnu.inference.predictor import DeSAMPredictor
    DeSAMPredictor(device=torch.device("cpu"))
elif how == "call":
    from desam_nnu.allocator import retain_freed_memory
    print(json.dumps({"first": retain_freed_memory(), "again": retain_freed_memory()}))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_trip():
    x = torch.empty(81, 1024, 256)
    x.fill_(1.0)
    del x
for _ in range(10):
    round_trip()
before = faults()
round_trip()
round_trip()
print(json.dumps({"faults": faults() - before}))
"""
PAGES = 81 * 1024 * 256 * 4 // 4096  # 4 KiB pages of one such tensor


def _probe(how: str, **env: str) -> list:
    environment = {k: v for k, v in os.environ.items() if k != "DESAM_MALLOC"}
    done = subprocess.run([sys.executable, "-c", PROBE, how], env={**environment, **env}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_glibc_default_faults_a_large_tensor_in_anew_every_time():
    """The problem the setting solves: the reference for the other tests."""
    assert _probe("none")[-1]["faults"] > PAGES


def test_a_cpu_predictor_makes_malloc_reuse_freed_memory():
    assert _probe("predictor")[-1]["faults"] < PAGES // 20


def test_desam_malloc_default_leaves_glibc_alone():
    assert _probe("predictor", DESAM_MALLOC="default")[-1]["faults"] > PAGES
    assert _probe("call", DESAM_MALLOC="default")[0] == {"first": False, "again": False}


def test_the_call_reports_success_and_is_idempotent():
    said, measured = _probe("call")
    assert said == {"first": True, "again": True} and measured["faults"] < PAGES // 20
