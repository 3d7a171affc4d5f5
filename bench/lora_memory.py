"""Peak memory of LoRA vs full fine-tuning of the same model, side by side (one `mmx finetune` process per mode).

    python bench/lora_memory.py [--backend torch|mindspore] [--hidden 1024] [--layers 8] [--steps 2] [--rank 16]

Builds the Qwen2.5-VL of bench/fsdp_memory.py (an LLM wider and deeper than mmx.tiny's, so the weights dominate the
process), trains ``--steps`` steps of the digits VQA data (micro-batch 1, global batch 4, fp32, no checkpoint) in
each mode in its own process: full fine-tuning, and ``training.lora`` (``--rank``, alpha 2 x rank, all-linear), and
prints per mode the peak RSS (``ru_maxrss``, host memory: this is the CPU bench; includes loading the weights), the
RSS after the last step, the trainable parameters, the AdamW state the run logged (8 bytes per trainable parameter)
and weights + gradients + AdamW moments (4 bytes per parameter + 12 per trainable one), then LoRA / full ratios.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fsdp_memory import _rss_mb, build  # noqa: E402


def worker(config_path, out, overrides):
    """One process: train, then write the memory numbers to ``out``.json."""
    from mmx.train.config import load_config
    from mmx.train.finetune import finetune

    start = time.perf_counter()
    trainer = finetune(load_config(config_path, overrides), echo=lambda text: None)
    sizes = trainer.sizes
    record = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mb": _rss_mb(),
              "trainable": sizes["trainable_parameters"], "total": sizes["total_parameters"],
              "adamw_mb": sizes["optimizer_state_bytes"] / 2 ** 20,
              "state_mb": (4 * sizes["total_parameters"] + 12 * sizes["trainable_parameters"]) / 2 ** 20,
              "seconds": time.perf_counter() - start, "losses": [float(x) for x in trainer.history]}
    with open(f"{out}.json", "w") as handle:
        json.dump(record, handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("torch", "mindspore"), default=os.environ.get("MMX_BACKEND", "torch"))
    parser.add_argument("--hidden", type=int, default=1024, help="LLM hidden size (a multiple of 128)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        return worker(*args.worker, overrides)
    modes = {"full": [], "lora": [f"training.lora={{rank: {args.rank}, alpha: {2 * args.rank}, "
                                  f"target_modules: all-linear}}"]}
    results = {}
    with tempfile.TemporaryDirectory() as root:
        config = build(root, args.hidden, args.layers)
        for mode, extra in modes.items():
            out = os.path.join(root, mode)
            command = [sys.executable, os.path.abspath(__file__), "--worker", config, out,
                       f"training.train_iters={args.steps}", *extra]
            run = subprocess.run(command, env=dict(os.environ, MMX_BACKEND=args.backend), capture_output=True,
                                 text=True)
            if run.returncode:
                sys.exit(f"{mode} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            results[mode] = json.load(open(f"{out}.json"))
    total = results["full"]["total"]
    print(f"Qwen2.5-VL, LLM hidden {args.hidden} x {args.layers} layers: {total / 1e6:.1f}M parameters, "
          f"{args.backend} on CPU, fp32, {args.steps} steps; LoRA rank {args.rank} all-linear")
    print(f"{'mode':6} {'trainable':>11} {'AdamW MB':>9} {'w+g+AdamW MB':>13} {'peak RSS MB':>12} "
          f"{'RSS after MB':>13} {'seconds':>8}")
    for mode, record in results.items():
        print(f"{mode:6} {record['trainable']:>11,} {record['adamw_mb']:9.1f} {record['state_mb']:13.0f} "
              f"{record['peak_rss_mb']:12.0f} {record['rss_mb']:13.0f} {record['seconds']:8.1f}")
    for key, what in (("state_mb", "w+g+AdamW"), ("peak_rss_mb", "peak RSS"), ("rss_mb", "RSS after training")):
        print(f"lora / full, {what}: {results['lora'][key] / results['full'][key]:.2f}")


if __name__ == "__main__":
    main()
