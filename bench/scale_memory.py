"""Peak host memory per rank of loading and of training a ≥ 300M-parameter model as N = 1, 2, 4 torchrun processes
(gloo, CPU) with ``training.data_parallel: fully_shard`` (issue 18's acceptance 4).

Writes a random float32 Qwen2.5-VL checkpoint (mmx.tiny's, with a wider and deeper LLM: ``--hidden``, ``--layers``,
``--intermediate``) and its ``mmx convert hf_to_mm`` output in a work directory, then for each N runs ``mmx
finetune``'s code path (``mmx.train.finetune.finetune``, 1–2 steps of short digit-VQA samples) under torchrun and
reads each rank's peak RSS (VmHWM) right after the model is built (loading: N = 1 streams the checkpoint into a model
built without weight storage; N > 1 builds on meta, shards with FSDP2 and fills each rank's own rows straight from
the safetensors file) and after training, and the file-backed pages mapped at each of those points (RssFile +
RssShmem: the shared libraries — torch's ~0.4 GiB, and under FSDP2 triton's ~0.09 GiB, which ``fully_shard``'s
imports map — pages that every process maps from the same files, so a machine running N ranks holds them once).
Prints the table side by side and lines ``loading_peak_ratio_n2=<x>`` (max over ranks of the N-process peak RSS /
the 1-process peak), ``loading_private_peak_ratio_n2=<x>`` (the same for the peak less those library pages: what
each rank adds to the machine; goal ≤ 0.6) and the same for training and N = 4.

Then the save: rank 0's peak RSS (VmHWM reset through ``/proc/self/clear_refs`` first) while the trainer writes a
checkpoint with model and AdamW moments (``Trainer.save``: gathered, written and dropped one tensor at a time), and
while the old path writes the same checkpoint (every tensor gathered into one dict on rank 0, then written); lines
``save_peak_ratio_n<N>=<x>`` (streamed peak / old peak, rank 0) and ``save_above_ratio_n<N>`` (the same, above the
RSS the save started from).

    python bench/scale_memory.py [--layers 24] [--hidden 1024] [--intermediate 3584] [--steps 1]
                                 [--work-dir /tmp/mmx-bench-scale] [--keep]

The work directory (about 3 GB) is removed at the end unless ``--keep``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

CHILD = r'''
import json, os, sys
import mmx.train.finetune as ft
from mmx.train.config import load_config

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def peak():
    return status("VmHWM")

def mark(kind):
    """The peak RSS so far, and the file-backed pages mapped now (the shared libraries: torch, triton, ...)."""
    marks[kind], marks[kind + "_file"] = peak(), status("RssFile") + status("RssShmem")

marks = {}
build = ft.build_model
def write_marks():
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as handle:
        json.dump(marks, handle)

def measured(*args, **kwargs):
    mark("before")   # the imports, the process group and the data checks: the baseline
    out = build(*args, **kwargs)
    mark("load")
    if sys.argv[3] == "load":   # --phase load: no training, no save
        write_marks()
        os._exit(0)
    return out
ft.build_model = measured
trainer = ft.finetune(load_config(sys.argv[1]), echo=lambda text: None)
mark("train")
marks["loss"] = float(trainer.history[-1])

def rss():
    return status("VmRSS")

def old_save(save):
    """The save before streaming: every tensor gathered into dicts on rank 0, then written."""
    from mmx import nn, ops
    from mmx.train import checkpoint as ckpt
    tensors = {}
    for name, value in nn.state_dict(trainer.model).items():
        whole = trainer.comm.full_tensor(value)
        if trainer.rank == 0:
            tensors[name] = ops.to_numpy(whole)
        del whole
    moments = trainer.optimizer.state_dict(gather_only=trainer.rank != 0)
    if trainer.rank == 0:
        ckpt.save_checkpoint(save, trainer.iteration, tensors, dict(trainer.metadata, backend=trainer.backend.NAME),
                             {"iteration": trainer.iteration}, moments)
    del tensors, moments
    trainer.comm.barrier()

import gc, shutil
for kind, save in (("save", lambda: trainer.save()), ("save_old", lambda: old_save(trainer.training["save"]))):
    trainer.training["save"] = os.path.join(sys.argv[2], kind)
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")   # VmHWM := VmRSS
    marks[kind + "_start"] = rss()
    save()
    marks[kind] = peak()
    trainer.comm.barrier()
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(trainer.training["save"])
write_marks()
'''


def make_checkpoint(work, hidden, layers, intermediate):
    """The random HF checkpoint + its mm conversion; returns (mm dir, parameter count)."""
    from mmx.checkpoint.store import MMSource
    from mmx.convert.drivers import hf_to_mm
    from mmx.tiny import make_tiny_checkpoint

    heads = hidden // 128
    hf_dir = make_tiny_checkpoint(os.path.join(work, "hf"), family="qwen2_5_vl", text_hidden_size=hidden,
                                  text_num_hidden_layers=layers, text_intermediate_size=intermediate,
                                  text_num_attention_heads=heads, text_num_key_value_heads=max(1, heads // 4),
                                  mrope_section=[16, 24, 24])
    mm_dir = os.path.join(work, "mm")
    hf_to_mm(hf_dir, mm_dir)
    shutil.rmtree(hf_dir)
    count = sum(int(__import__("numpy").prod(shape)) for _, shape in MMSource(mm_dir).entries.values())
    return mm_dir, count


def run(work, mm_dir, digits, n, steps, host_memory, phase):
    """{rank: {"load": bytes, "train": bytes, "loss": float}} of an N-process fully sharded run."""
    out = os.path.join(work, f"n{n}")
    os.makedirs(out, exist_ok=True)
    config = {"model": {"init_from_hf_path": mm_dir},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"], "cutoff_len": 64},
              "training": {"train_iters": steps, "micro_batch_size": 1, "global_batch_size": 4, "lr": 1e-5,
                           "data_parallel": "fully_shard", "log_interval": 1, "progress_bar": False,
                           "host_memory": host_memory,
                           "log_dir": os.path.join(out, "logs")}}
    path = os.path.join(out, "config.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    child = os.path.join(out, "child.py")
    with open(child, "w") as handle:
        handle.write(CHILD)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", child, path,
               out, phase]
    env = dict(os.environ, MMX_BACKEND="torch", TQDM_DISABLE="1", OMP_NUM_THREADS=str(max(1, os.cpu_count() // n)))
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"N={n} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    result = {rank: json.load(open(os.path.join(out, f"rank{rank}.json"))) for rank in range(n)}
    print(f"N={n}: {time.time() - start:.0f} s", flush=True)
    return result


def most(ranks, kind):
    """The largest rank's value of ``kind``: a mark (bytes), ``above`` (loading peak - baseline) or
    ``<mark>_private`` (the peak less the file-backed pages mapped at that mark: the shared libraries' code and
    data, which every process maps from the same files and the machine holds once)."""
    def value(r):
        if kind == "above":
            return r["load"] - r["before"]
        if kind.endswith("_private"):
            mark = kind[:-len("_private")]
            return r[mark] - r[mark + "_file"]
        return r[kind]
    return max(value(r) for r in ranks.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3584)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--work-dir", default="/tmp/mmx-bench-scale")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phase", choices=["all", "load"], default="all",
                        help="load: only build and load the model (a model too large to train here)")
    parser.add_argument("--host-memory", choices=["auto", "keep", "release"], default="auto",
                        help="training.host_memory of the runs (default: the trainer's)")
    args = parser.parse_args()
    from mmx.data.digits import make_digits_vqa

    os.makedirs(args.work_dir, exist_ok=True)
    try:
        mm_dir, count = make_checkpoint(args.work_dir, args.hidden, args.layers, args.intermediate)
        digits = make_digits_vqa(os.path.join(args.work_dir, "digits"), size=56, max_samples=8)
        print(f"model: {count / 1e6:.0f}M parameters (float32 checkpoint {count * 4 / 2 ** 30:.2f} GiB)", flush=True)
        sizes = [int(n) for n in args.sizes.split(",")]
        results = {n: run(args.work_dir, mm_dir, digits, n, args.steps, args.host_memory, args.phase) for n in sizes}
    finally:
        if not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    gib = 2 ** 30
    trained = args.phase == "all"
    print(f"{'N':>3} {'baseline':>9} {'loading peak':>13} {'- baseline':>11} {'libraries':>10} {'loading private':>16}"
          + (f" {'training peak':>14} {'training private':>17} {'loss':>8}" if trained else "")
          + "   (GiB per rank, the largest rank's)")
    for n, ranks in results.items():
        print(f"{n:>3} {most(ranks, 'before') / gib:>9.2f} {most(ranks, 'load') / gib:>13.2f} "
              f"{most(ranks, 'above') / gib:>11.2f} {most(ranks, 'load_file') / gib:>10.2f} "
              f"{most(ranks, 'load_private') / gib:>16.2f}"
              + (f" {most(ranks, 'train') / gib:>14.2f} {most(ranks, 'train_private') / gib:>17.2f} "
                 f"{ranks[0]['loss']:>8.4f}" if trained else ""))
    base = results[sizes[0]]
    kinds = (("load", "loading_peak"), ("above", "loading_above_baseline"), ("load_private", "loading_private_peak"))
    if trained:
        kinds += (("train", "training_peak"), ("train_private", "training_private_peak"))
    for n in sizes[1:]:
        for kind, label in kinds:
            print(f"{label}_ratio_n{n}={most(results[n], kind) / most(base, kind):.3f}")
    if not trained:
        return
    print(f"{'N':>3} {'save start (GiB)':>17} {'streamed save peak':>19} {'old save peak':>14}   (rank 0, GiB)")
    for n, ranks in results.items():
        r = ranks[0]
        print(f"{n:>3} {r['save_start'] / gib:>17.2f} {r['save'] / gib:>19.2f} {r['save_old'] / gib:>14.2f}")
    for n, ranks in results.items():
        r = ranks[0]
        print(f"save_peak_ratio_n{n}={r['save'] / r['save_old']:.3f}")
        print(f"save_above_ratio_n{n}={(r['save'] - r['save_start']) / (r['save_old'] - r['save_old_start']):.3f}")

if __name__ == "__main__":
    main()
