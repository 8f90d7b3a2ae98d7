"""Keep freed host memory inside the process during CPU training (glibc's malloc tunables).

glibc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit) with a fresh
``mmap`` and hands it back with ``munmap`` on free. A CPU training step allocates and frees several
such blocks per pass (fastnet94 at 250 images: the 64x31x31 activations are 61 MB, the 256x15x15
ones 58 MB), so the kernel page-faults and zero-fills them again on every pass: ``aten::fill_``
inside max-pool's backward alone took 14% of a profiled step. Serving all blocks from the heap and
not trimming it lets the process reuse its pages: measured +13-25% fastnet94 training img/s in fp32
and bf16 (benchmarks/speed.md). The price is that freed memory stays with the process until it
ends, so this is for training runs, not for a library call inside someone else's program.

Hand-written because PyTorch has no CPU caching allocator switch; ``mallopt`` is glibc's public API.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h: free heap above this size at the top is returned to the OS
M_MMAP_MAX = -4  # glibc malloc.h: at most this many blocks served by mmap (0: none)
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc serve large blocks from the heap and keep up to 1 GiB of freed top-of-heap memory.

    Returns True when both settings took effect; False (and changes nothing) off Linux/glibc.
    Safe to call more than once.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("glibc mallopt refused the host-memory settings; training runs with the defaults")
    return ok


def resolve_keep_host_memory(value: bool | str, device_type: str) -> bool:
    """``auto`` -> on for CPU training (where the activations live in host memory), off on GPUs."""
    if value == "auto":
        return device_type == "cpu"
    return bool(value)
