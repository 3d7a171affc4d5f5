"""training.host_memory: under ``keep`` a freed 64 MiB host buffer is reused by the next allocation of that size
(no page faults), under glibc's defaults (``release``) every allocation is a fresh mmap that faults each page in.
Each mode runs in its own process: the setting is process-wide."""
import json
import subprocess
import sys

import pytest

PROBE = r'''
import ctypes, ctypes.util, json, resource, sys
from mmx.train.host_memory import set_host_memory

applied = set_host_memory(sys.argv[1])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
size, faults = 64 * 2 ** 20, []   # 64 MiB: above glibc's largest mmap threshold (32 MiB)
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)   # touch every page, as a tensor's first write does
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
'''


def probe(mode):
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_keep_reuses_freed_host_memory():
    keep, release = probe("keep"), probe("release")
    assert keep["applied"] and not release["applied"]   # glibc (the supported Linux hosts)
    assert probe("auto")["applied"]
    pages = 64 * 2 ** 20 // 4096
    # glibc's defaults: each 64 MiB buffer is a new mapping, all of its 16,384 pages fault in on every allocation
    assert min(release["faults"][1:]) >= 0.9 * pages
    # keep: the first allocation faults its pages in, the next ones reuse them
    assert keep["faults"][0] >= 0.9 * pages and max(keep["faults"][1:]) <= 0.02 * pages


def test_unknown_mode_is_refused_and_auto_releases_under_fully_shard():
    from mmx.train.host_memory import set_host_memory

    assert set_host_memory("auto", sharded=True) is False   # changes nothing in this process
    with pytest.raises(ValueError, match="training.host_memory 'cache': use auto, keep"):
        set_host_memory("cache")
