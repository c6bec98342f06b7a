"""Fixed malloc thresholds, so buffers of a few MiB are reused instead of faulted in anew.

glibc malloc serves a block at or above its mmap threshold (128 KiB at start) with a fresh
``mmap`` and returns it to the kernel when freed, and trims the heap top past its trim
threshold. Both thresholds adapt: freeing a large mmapped block raises them. A process that
has only ever moved ~1 MiB messages (a 4,096-row lookup of dim 64) keeps them low, so every
call maps, faults in (about 256 minor faults a MiB) and unmaps its buffers; one that once
freed a 16 MiB block reuses its heap. Setting the thresholds at start makes every process
behave like the second, whatever traffic it saw first.

The server sets them in its entry point (``mps server``) and the image sets the same values
in the environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``). A ``PSClient``
sets them too when it is made (:func:`reuse_large_buffers_by_default`), since the receive
buffers of its calls are allocated by gRPC, where no option reaches them: the cost to the
host process is up to ``TRIM_THRESHOLD`` of freed memory kept for reuse. Thresholds the
environment already sets are left as they are, and ``PSClient(tune_allocator=False)``
leaves the allocator alone (see README, "Using it").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's largest dynamic value on 64-bit
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_large_buffers(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (``mallopt``); True when set,
    False where the C library is not glibc (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok


def reuse_large_buffers_by_default() -> bool:
    """:func:`reuse_large_buffers` unless the environment sets either threshold (a choice
    made for the whole process stands); True when this call set them."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    return reuse_large_buffers()
