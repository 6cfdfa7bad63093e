"""glibc's malloc told to keep freed memory for reuse, so that CPU prediction does not pay page faults.

PyTorch's CPU tensors come straight from malloc. glibc serves a block above its mmap threshold (128 KiB,
rising with use up to 32 MiB) with fresh pages from the kernel and unmaps it on free, and gives the top of
its heap back above 128 KiB. So every new tensor of tens of MiB, such as PRIM's image side over 81 grid prompts
([81, 1024, 256] float32: 85 MB), is page-faulted and zeroed by the kernel 4 KiB at a time, and on this 2-core
CPU that cost more than PRIM's arithmetic (BENCHMARKS.md, "The allocator"). Raising both thresholds keeps freed
pages in the process, where the next tile's tensors reuse them. The cost: the resident size stays at its high-water
mark instead of falling between tiles, and the first few tiles may grow the heap by a few such tensors (torch's
64-byte-aligned blocks fit a freed hole only once neighbouring holes have merged); measured, the peak rose by up to 13%.

The setting is process-wide and cannot be undone to glibc's dynamic default, which is why it is made where CPU
prediction starts (``DeSAMPredictor`` on a CPU) and why ``DESAM_MALLOC=default`` (read at that moment) leaves glibc
alone: the reference arm of ``benchmarks/allocator.py``. Training steps showed no gain beyond the noise (BENCHMARKS),
so the trainer does not set it.
"""
import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV", "retain_freed_memory"]

ENV = "DESAM_MALLOC"  # 'default': leave glibc's malloc settings alone
# blocks up to 128 MiB come from the heap and are reused after free (PRIM's 85 MB); larger ones, volume-sized arrays,
# are mapped and unmapped as glibc does: at 1 GiB the synthetic 512 x 512 x 300 CT peaked at 7.25 GB instead of 5.11
MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's top back to the kernel (mallopt takes an int)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_done = False


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); True if they are set now or were before.
    False where there is no glibc (macOS, Windows, musl) or ``DESAM_MALLOC=default``."""
    global _done
    if _done:
        return True
    if os.environ.get(ENV, "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
