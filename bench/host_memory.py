"""Host memory churn of training steps whose shapes change every step: minor page faults, kernel (system) time and
step time per step, and the peak RSS, for the host allocator settings side by side (issue 20).

    python bench/host_memory.py [--hidden 384] [--layers 4] [--vocab 151936] [--steps 36] [--rounds 1]

The bench model of bench/train.py (a random Qwen2.5-VL, 151,936-token vocabulary, tied embeddings; ~72M parameters
at the defaults) trains ``--steps`` steps of the mmx Trainer's step (fused output layer + cross entropy, fused AdamW,
fp32, torch) on batches of 2 rows whose shape changes every step, as VLM batches do: images of 224-448 px sides
and answers of 120-250 tokens, every position supervised, six distinct shapes in a cycle. Workers, each in its own
process, interleaved ``--rounds`` times (the best of each column counts):

    glibc-default   glibc's allocator as the process starts (``training.host_memory: release``): blocks above the
                    mmap threshold (128 KiB rising to at most 32 MiB) are fresh mmaps, zero-filled by page faults on
                    first touch and unmapped when freed, and the heap is trimmed when 128 KiB are free at its top
    mmx-default     what the trainer sets in one process (``training.host_memory: auto``, i.e. ``keep``;
                    mmx.train.host_memory): every block from
                    the heap, freed memory kept for the next step (``mallopt(M_MMAP_MAX, 0)``,
                    ``M_TRIM_THRESHOLD`` = unlimited)

Per worker: the medians over the steps after the first (warm-up) of minor page faults (``ru_minflt``), system
seconds (``ru_stime``) and wall seconds, the peak RSS, and the RSS after steps 3, 12 and the last (a heap that keeps
freed memory fragments as the shapes change: its RSS grows for some steps, then settles). The last lines: ``host_memory_faults_ratio=<x>``,
``host_memory_step_ratio=<x>`` and ``host_memory_peak_rss_ratio=<x>`` (mmx-default / glibc-default).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import QWEN_VOCAB_SIZE, build_checkpoint, make_batch, trainable_model  # noqa: E402  (bench/train.py: the same model)

SHAPES = ((448, 220), (224, 150), (336, 250), (280, 120), (392, 180), (252, 200))   # (image side, answer tokens)
WORKERS = {"glibc-default": "release", "mmx-default": "keep"}


def rss():
    """This process's resident memory now (VmRSS), bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024


def worker(hf_dir, batch_dir, steps, mode):
    """Train ``steps`` steps cycling through the saved batches; → per-step (minor faults, system s, wall s, RSS after
    the step) and the losses."""
    from mmx.train.host_memory import set_host_memory
    from mmx.train.loop import lm_loss, prepare_micro_batch, train_step
    from mmx.train.loss import token_weights

    set_host_memory(mode)
    model, train, params, optimizer = trainable_model(hf_dir)
    batches = [dict(np.load(os.path.join(batch_dir, f"batch{i}.npz"))) for i in range(len(SHAPES))]
    records, losses = [], []
    for step in range(steps):
        batch = batches[step % len(batches)]
        prepared = [prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])]
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loss, _ = train_step(train, params, optimizer, lambda item: lm_loss(model, *item), prepared, 1e-5, 1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        records.append((after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime,
                        time.perf_counter() - start, rss()))
        losses.append(loss)
    return records, losses


def run_worker(name, hf_dir, batch_dir, steps):
    run = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", hf_dir, "--batch-dir", batch_dir,
                          "--steps", str(steps)], capture_output=True, text=True,
                         env=dict(os.environ, MMX_BACKEND="torch"))
    if run.returncode:
        sys.exit(f"{name} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=QWEN_VOCAB_SIZE)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        records, losses = worker(args.dir, args.batch_dir, args.steps, WORKERS[args.worker])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"records": records, "losses": losses, "peak_rss": peak}))
        return
    with tempfile.TemporaryDirectory(prefix="mmx-bench-host-") as work:
        hf_dir = build_checkpoint(os.path.join(work, "hf"), args.hidden, args.layers, args.vocab)
        for i, (image, answer) in enumerate(SHAPES):
            np.savez(os.path.join(work, f"batch{i}.npz"),
                     **make_batch(hf_dir, 2, image, 32, answer, "every", args.vocab))
        print("shapes per step (rows x tokens): " + ", ".join(
            "x".join(map(str, np.load(os.path.join(work, f"batch{i}.npz"))["input_ids"].shape))
            for i in range(len(SHAPES))), flush=True)
        best = {}
        for _ in range(args.rounds):
            for name in WORKERS:
                result = run_worker(name, hf_dir, work, args.steps)
                faults, system, wall = (statistics.median(r[i] for r in result["records"][1:]) for i in range(3))
                row = best.setdefault(name, {"faults": faults, "system": system, "wall": wall,
                                             "peak_rss": result["peak_rss"], "losses": result["losses"],
                                             "rss": [r[3] for r in result["records"]]})
                row.update(faults=min(row["faults"], faults), system=min(row["system"], system),
                           wall=min(row["wall"], wall), peak_rss=max(row["peak_rss"], result["peak_rss"]))
    marks = sorted({min(3, args.steps), min(12, args.steps), args.steps})
    print(f"{'worker':14s} {'minor faults/step':>18s} {'system s/step':>14s} {'step s':>8s} {'peak RSS MiB':>13s}  "
          + "  ".join(f"RSS after {k}" for k in marks)
          + f"  (medians over steps 2..{args.steps}, best of {args.rounds} round(s))")
    for name, row in best.items():
        print(f"{name:14s} {row['faults']:>18.0f} {row['system']:>14.3f} {row['wall']:>8.3f} "
              f"{row['peak_rss'] / 2 ** 20:>13.0f}  " + "  ".join(f"{row['rss'][k - 1] / 2 ** 20:>11.0f}" for k in marks))
    ours, theirs = best["mmx-default"], best["glibc-default"]
    drift = max(abs(a - b) / abs(b) for a, b in zip(ours["losses"], theirs["losses"]))
    print(f"losses of the two workers: max relative difference {drift:.1e} over {args.steps} steps")
    print(f"host_memory_faults_ratio={ours['faults'] / max(theirs['faults'], 1):.3f}")
    print(f"host_memory_step_ratio={ours['wall'] / theirs['wall']:.3f}")
    print(f"host_memory_peak_rss_ratio={ours['peak_rss'] / theirs['peak_rss']:.3f}")


if __name__ == "__main__":
    main()
