"""Keep the memory a training step frees, so that the next step reuses it.

A training step allocates and frees the same large arrays every time (the
activations and gradients of every time step: 3 to 13 MiB each for a char-RNN
of 256 units over 100 steps). glibc's malloc hands arrays above its mmap
threshold straight back to the kernel when they are freed, so every step pays
again for fresh zeroed pages: about a quarter of the large configurations'
step time here (29.8 ms against 22.3 ms for the tanh RNN, measured with
benchmarks/step.py). Raising the mmap threshold to its maximum (32 MiB on
64-bit) and the trim threshold to 1 GiB keeps those arrays in malloc's heap,
where they are reused. A process keeps the memory of its largest step, which
it needed anyway, and freed memory up to 1 GiB: about 20 MiB more resident
memory in the tutorials' default runs (adder 119 against 100 MiB).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """mallopt(M_MMAP_THRESHOLD, 32 MiB) and mallopt(M_TRIM_THRESHOLD, 1 GiB); True if this C library took them.

    Other C libraries (musl, macOS, Windows) are left as they are: False.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
