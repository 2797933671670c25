"""Reuse of freed memory for the tensors of a training run.

glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh mapping and
unmaps it when it is freed, so such tensors are page-faulted and zeroed by the kernel on every
step. Inside ``reuse_freed_memory()`` large blocks come from the heap and freed ones stay there
for the next step's tensors: 4-9 % more training steps per second on 2 cores, the same peak
memory. On leaving the outermost scope, the thresholds go to glibc's settled values and the free
heap goes back to the system (``malloc_trim``). Prediction does not use it: each call would start
from an empty heap, and the differently sized feature maps of one large window fragment it
(64x512x512 in 3D: 4 % slower, 1.2 GB more; 100x1024x1024 in nine windows: 140.1 against
139.9 s, 1 GB more). Elsewhere than glibc, or with ``CAREKIT_HEAP_REUSE=0`` in the environment,
nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
MMAP_MAX_DEFAULT = 65536
MMAP_THRESHOLD_SETTLED = 32 * 2**20  # where glibc's dynamic threshold ends up on 64-bit systems
HELD = 2**31 - 1  # trim threshold inside: never give the heap's top back while reusing it

_lock = threading.Lock()
_depth = 0


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc and reuse is not switched off, else None."""
    if os.environ.get("CAREKIT_HEAP_REUSE", "1") == "0" or platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")) else None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Serve large allocations from the heap and keep freed ones for reuse (nests, thread-safe)."""
    global _depth
    libc = glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, HELD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_SETTLED)
                libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_SETTLED)
                libc.malloc_trim(0)
