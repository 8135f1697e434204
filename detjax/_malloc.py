"""glibc malloc settings of a training process.

XLA:CPU runs a step on several threads, and glibc gives every thread that contends for the
heap an arena of its own (up to 8 per core). The step's temporary buffers, freed after every
step, then stay spread over those arenas. ``limit_arenas`` caps the arenas of the running
process with ``mallopt(M_ARENA_MAX)``, as the ``MALLOC_ARENA_MAX`` environment variable does at
start-up (arenas that already exist stay), at two per core. Measured with
``benchmarks/bench_real.py`` (YOLOv8n, 320 px, batch 16, 5 epochs, this project's 2-core CPU):
peak RSS 2.82 GB uncapped, 2.64 GB at 4 arenas, 2.65 GB at 2; seconds per epoch 13.43, 13.47
and 14.39 - two arenas for two cores made the threads wait for each other. It does nothing
where libc is not glibc or where ``MALLOC_ARENA_MAX`` is set (the user's choice wins).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_ARENA_MAX = -8  # glibc malloc.h
_done = False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_arenas(count: int | None = None) -> bool:
    """Caps glibc's malloc arenas at ``count`` (default: two per CPU core; once per process);
    True when it was set."""
    global _done
    if _done or "MALLOC_ARENA_MAX" in os.environ:
        return False
    _done = True
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (macOS, musl without mallopt)
        return False
    count = count if count is not None else 2 * (os.cpu_count() or 1)
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(count)))


def release_free_memory() -> bool:
    """Returns the free pages of glibc's heaps to the system (``malloc_trim(0)``), e.g. after
    XLA compiled a large program; True when something was released."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(ctypes.c_size_t(0)))
