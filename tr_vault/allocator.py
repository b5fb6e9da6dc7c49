"""glibc's malloc arenas: one for the server, not eight per core.

glibc gives each thread that allocates an arena of its own (up to 8 per core). The journal's
thread and trio's worker threads allocate in theirs, and what is freed there is kept for
reuse rather than given back, spread over the arenas: a long-running server's RSS creeps up
while the memory it uses stays the same (docs/benchmarks.md section 11: +1.1-1.6 MiB per 10k
calls with the default, +0.3 with one arena, at the same throughput). glibc reads
`MALLOC_ARENA_MAX` only as the process starts, before Python runs; `mallopt(M_ARENA_MAX)` sets
the same limit for the arenas made from then on.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's <malloc.h>
SERVER_ARENAS = 1


def limit_arenas(count: int = SERVER_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `count`; False where nothing was changed: the operator set
    `MALLOC_ARENA_MAX` (theirs wins), or the C library is not glibc (musl, macOS)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, count))
    log.debug("malloc arenas limited to %d: %s", count, done)
    return done
