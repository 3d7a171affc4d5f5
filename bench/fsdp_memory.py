"""Host memory per process of `mmx finetune` in 2 torchrun processes on CPU: replicate vs fully_shard (torch FSDP2).

    python bench/fsdp_memory.py [--hidden 1024] [--layers 8] [--steps 2]

Builds a Qwen2.5-VL checkpoint with a wider, deeper LLM than mmx.tiny's (the weights dominate the process), trains
``--steps`` steps of the digits VQA data in each mode (2 processes, micro-batch 1, global batch 4, no checkpoint
written) and prints, per rank, the peak RSS (``ru_maxrss``: includes loading, when every rank briefly holds the whole
model before sharding), the RSS after the last step, and the bytes of trainable weights + gradients + AdamW moments
this rank holds (16 bytes per parameter it owns), then the fully_shard / replicate ratios.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker(config_path, out, overrides):
    """One torchrun process: train, then write this rank's memory numbers to ``out``.rank{r}.json."""
    from mmx.train.config import load_config
    from mmx.train.finetune import finetune

    start = time.perf_counter()
    trainer = finetune(load_config(config_path, overrides), echo=lambda text: None)
    owned = sum(param.to_local().numel() if hasattr(param, "to_local") else param.numel() for param in trainer.params)
    record = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mb": _rss_mb(),
              "state_mb": 16 * owned / 2 ** 20, "trainable": sum(param.numel() for param in trainer.params),
              "seconds": time.perf_counter() - start}
    with open(f"{out}.rank{trainer.rank}.json", "w") as handle:
        json.dump(record, handle)


def build(root, hidden, layers):
    """(finetune config path) of a Qwen2.5-VL with a ``hidden``-wide, ``layers``-deep LLM and the digits data."""
    from mmx.convert.drivers import hf_to_mm
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    heads = hidden // 128
    hf_dir = make_tiny_checkpoint(os.path.join(root, "hf"), family="qwen2_5_vl", text_hidden_size=hidden,
                                  text_num_hidden_layers=layers, text_intermediate_size=hidden * 11 // 4,
                                  text_num_attention_heads=heads, text_num_key_value_heads=max(1, heads // 4),
                                  vision_out_hidden_size=hidden, mrope_section=[16, 24, 24])
    hf_to_mm(hf_dir, os.path.join(root, "mm"))
    digits = make_digits_vqa(os.path.join(root, "digits"), size=56, max_samples=16)
    config = {"model": {"init_from_hf_path": os.path.join(root, "mm")},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
              "training": {"micro_batch_size": 1, "global_batch_size": 4, "lr": 1e-4, "loss_type": "per_token",
                           "save": None, "log_dir": os.path.join(root, "logs"),
                           "log_interval": 1, "progress_bar": False, "peak_tflops": 1.0}}
    path = os.path.join(root, "finetune.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="LLM hidden size (a multiple of 128)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        return worker(*args.worker, overrides)
    results = {}
    with tempfile.TemporaryDirectory() as root:
        config = build(root, args.hidden, args.layers)
        for mode in ("replicate", "fully_shard"):
            out = os.path.join(root, mode)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       os.path.abspath(__file__), "--worker", config, out, f"training.data_parallel={mode}",
                       f"training.train_iters={args.steps}"]
            run = subprocess.run(command, env=dict(os.environ, MMX_BACKEND="torch"), capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{mode} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            results[mode] = [json.load(open(f"{out}.rank{rank}.json")) for rank in (0, 1)]
    trainable = results["replicate"][0]["trainable"]
    print(f"Qwen2.5-VL, LLM hidden {args.hidden} x {args.layers} layers: {trainable / 1e6:.1f}M trainable "
          f"parameters, 2 processes (gloo, CPU), {args.steps} steps")
    print(f"{'mode':12} {'rank':>4} {'peak RSS MB':>12} {'RSS after MB':>13} {'w+g+AdamW MB':>13} {'seconds':>8}")
    for mode, ranks in results.items():
        for rank, record in enumerate(ranks):
            print(f"{mode:12} {rank:>4} {record['peak_rss_mb']:12.0f} {record['rss_mb']:13.0f} "
                  f"{record['state_mb']:13.0f} {record['seconds']:8.1f}")
    for key, what in (("peak_rss_mb", "peak RSS"), ("rss_mb", "RSS after training"), ("state_mb", "w+g+AdamW")):
        ratio = max(r[key] for r in results["fully_shard"]) / max(r[key] for r in results["replicate"])
        print(f"fully_shard / replicate, {what} (max over ranks): {ratio:.2f}")


if __name__ == "__main__":
    main()
