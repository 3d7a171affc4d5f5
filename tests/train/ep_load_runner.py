"""One expert-parallel rank's rank-local load, measured (tests/train/test_ep_training.py): ``python ep_load_runner.py
MM_DIR EP_SIZE EP_RANK`` builds the model of the mm checkpoint without weight storage, then
``mmx.expert_parallel.load_rank_local`` fills it, and prints one JSON line: the process's RSS before the load, its
peak during the load (VmHWM, reset just before it through /proc/self/clear_refs), the bytes the process read from
files during the load (/proc/self/io rchar) and the bytes of the parameters it holds afterwards."""
import json
import sys


def _status(field):
    """A /proc/self/status memory field in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _read_bytes():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise KeyError("rchar")


def main(mm_dir, ep_size, ep_rank):
    import numpy as np

    from mmx import models, nn, ops
    from mmx.checkpoint.store import MMSource
    from mmx.expert_parallel import load_rank_local

    source = MMSource(mm_dir, streaming=True)
    with nn.empty_init():
        model = models.build(mm_dir)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:   # "5": the peak RSS (VmHWM) starts again from now
        handle.write("5")
    read_before = _read_bytes()
    load_rank_local(model, source, ep_size, ep_rank)
    read = _read_bytes() - read_before
    peak = _status("VmHWM")
    held = sum(int(np.prod(param.shape)) * ops.to_numpy(param).itemsize for _, param in nn.named_parameters(model))
    print(json.dumps({"rss_before": before, "load_peak": peak, "read_bytes": read, "held_bytes": held}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
