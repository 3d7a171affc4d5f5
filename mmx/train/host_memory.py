"""How the process's host allocator treats freed memory (``training.host_memory``).

A training step on the CPU (and the host side of any step) allocates and frees the same few hundred MB every
step: activations, the fused loss's logits chunk, gradients. glibc's malloc serves blocks above its mmap threshold
(128 KiB, rising with use to at most 32 MiB) with fresh mmaps, which the kernel zero-fills page by page on first
touch and which ``free`` unmaps again, and it trims the heap top as soon as 128 KiB are free there. With VLM batches
whose shapes change every step the threshold never settles, so every step pays those page faults again in kernel
time (``bench/host_memory.py`` measures it).

``keep`` makes glibc serve every block from its heap and keep freed memory for the next allocation
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``): a caching host allocator, as the CUDA and
Ascend device allocators are; the process's RSS stays near its peak instead of falling between steps. ``release``
leaves glibc's own settings (use it when other programs on the host need the memory back between steps). ``auto``
(the default) is ``keep``, except in a fully sharded run of several processes: there FSDP2's per-layer gathers and
gradient shards fragment a heap that never returns memory, and the training peak per rank rose (328M model, N=2:
5.55 instead of 4.08 GiB, bench/scale_memory.py), so glibc's defaults stay. Where the C library is not glibc the
setting has no effect (``set_host_memory`` says so).
"""
import ctypes
import ctypes.util

MODES = ("auto", "keep", "release")
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameter numbers (malloc.h)
TRIM_UNLIMITED = 2 ** 31 - 1            # mallopt takes an int: trim only when 2 GiB lie free at the heap top


def set_host_memory(mode, sharded=False):
    """Apply ``training.host_memory`` ``mode`` to this process's allocator (``sharded``: a fully sharded run of
    several processes, where ``auto`` means ``release``); → whether glibc's settings changed."""
    if mode not in MODES:
        raise ValueError(f"training.host_memory {mode!r}: use auto, keep (freed host memory reused by the next step) "
                         f"or release (glibc's defaults)")
    if mode == "release" or mode == "auto" and sharded:
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_UNLIMITED))


def _glibc():
    """The process's C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc
