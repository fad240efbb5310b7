"""Keep freed CPU memory in the process, so that the same-sized tensors of an attack's steps reuse it.

An attack on the CPU allocates and frees the same activation and gradient tensors at every step.
glibc's malloc gives freed memory back to the kernel (tensors above its mmap threshold, and the top of the heap
beyond its trim threshold), so the next step takes it again, page by page: a page fault and the zeroing of 4 KiB
each. On the quickstart's model that was over a million page faults for a short AutoAttack, about a sixth of its
time. :func:`keep_freed_memory` raises both thresholds (``mallopt``), as allocators such as jemalloc do by
default: the arithmetic, and so every result, is unchanged. The cost is that the process keeps its peak memory
until it exits. It does nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameter numbers (glibc's malloc.h); values are C ints, so at most 2**31 - 1.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory (blocks up to 1 GiB come from the heap, which is not trimmed below
    1 GiB of free space and grows 64 MiB at a time); True when applied. Process-wide and idempotent."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc (macOS, musl, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
