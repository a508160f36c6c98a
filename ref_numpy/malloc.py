"""Keep freed memory in the process: glibc's malloc settings for a NumPy training or decoding loop.

A training step allocates its activations and temporaries afresh and frees them when the step
ends (tiny-llama at (B, T) = (16, 128): about 150 MB). glibc's malloc serves every allocation
above M_MMAP_THRESHOLD with a new mmap, and hands free memory at the top of its heap back to the
OS once more than M_TRIM_THRESHOLD of it is free; both start small (128 KiB) and grow only as
blocks of growing size are freed. So each step touches new pages again, and the kernel maps and
zeroes every one of them: 39,000 page faults per step there, 0.29 s instead of 0.22 s on one core.
With both thresholds raised, the next step reuses the memory that the last one freed: no faults
after the first step, and the same peak resident memory (216 MB), which is then kept rather
than given back between steps. (torch's step of the same model faults 1,800 times.)

    from ref_numpy.malloc import keep_freed_memory
    keep_freed_memory()          # once, before the loop; False where the C library is not glibc

``crosscheck train`` and ``crosscheck generate`` call it, and so do both sides of ``crosscheck
bench train``. The same effect without code: ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment (glibc reads them at start-up).
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20    # allocations above this still get their own mmap (glibc's maximum)
TRIM_THRESHOLD = 1 << 30     # free memory kept at the top of the heap before any is returned


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to 32 MiB and its trim threshold to 1 GiB for this process.

    Returns True if both were set, False where the C library has no working ``mallopt``
    (macOS and Windows have none; musl's does nothing and returns 0): there nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
