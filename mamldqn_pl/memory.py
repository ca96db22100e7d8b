"""Keep freed memory in the process instead of handing it back to the OS after every meta-step (glibc only).

Why: a meta-step of the default config allocates and frees dozens of temporaries of about 2 MiB (8,192 rows x 64
features). glibc serves such blocks with mmap above a threshold that adapts only up to a point, and trims the heap
top whenever its free part passes another threshold; either way the memory goes back to the OS and the next step
takes it again page by page, with page faults and zeroing by the kernel, which costs as much as the arithmetic on a
small CPU network. Raising both thresholds keeps the blocks in the heap. The arithmetic is untouched (a fit with and
without it gives bitwise the same parameters, tests/test_memory.py); the price is that a process keeps its peak
heap until it exits. PyTorch's own CPU tuning guide recommends an allocator that does this (jemalloc, tcmalloc);
this is the same effect without a new dependency. `mamldqn` calls it at start; MAMLDQN_KEEP_FREED_MEMORY=0 in the
environment leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30  # the heap top is given back only past 1 GiB free


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where libc is not glibc or the environment
    says MAMLDQN_KEEP_FREED_MEMORY=0 (nothing changed then)."""
    if os.environ.get("MAMLDQN_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    # the mmap threshold first: setting either one stops glibc's own adaptation of the other
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
