"""Decode cost per token with the KV cache stays flat as the output grows: per-token latency at 16 vs 256 tokens.

    python bench/infer.py [--backend torch|mindspore] [--hidden 256] [--layers 4] [--prompt-tokens 64]

Builds a random Qwen2.5-VL checkpoint (mmx.tiny with a wider LLM), turns EOS off so every run generates exactly the
requested number of tokens, and prints the mean decode-step latency (the prefill excluded) of a 16-token and a
256-token greedy run with the cache, the mean of the 256-token run's last 16 steps, and — for contrast — the same
for runs without the cache (16 and 64 tokens; each step recomputes the whole sequence). Beside wall time, the
process CPU time per decode step (steadier on a shared machine). Last line:
``cache_latency_ratio_256_vs_16=<float>`` (wall; 1.0 = perfectly flat).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "mindspore"], default=None)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--long", type=int, default=256)
    args = parser.parse_args()
    from mmx import backend
    if args.backend:
        backend.set_backend(args.backend)
    from mmx import infer
    from mmx.infer import generate, settings
    from mmx.tiny import make_tiny_checkpoint

    directory = make_tiny_checkpoint(tempfile.mkdtemp(prefix="mmx_bench_infer_"), "qwen2_5_vl",
                                     text_hidden_size=args.hidden, text_num_hidden_layers=args.layers,
                                     text_intermediate_size=4 * args.hidden, text_num_attention_heads=8,
                                     text_num_key_value_heads=2, mrope_section=[4, 6, 6] if args.hidden == 256
                                     else None)
    pipeline = infer.load(directory)
    prompt = np.random.default_rng(0).integers(10, 300, (1, args.prompt_tokens))
    inputs = {"input_ids": prompt, "attention_mask": np.ones_like(prompt)}

    def run(tokens, use_cache):
        """(wall seconds of each decode step, process CPU seconds of the whole run)."""
        config = settings.override(pipeline.settings, max_new_tokens=tokens, use_cache=use_cache, do_sample=False,
                                   eos_token_ids=(), stop_strings=())
        cpu = time.process_time()
        result = generate.generate(pipeline.model, inputs, config)
        cpu = time.process_time() - cpu
        assert len(result.token_ids[0]) == tokens
        return np.array(result.step_seconds), cpu

    def report(label, tokens, use_cache, prefill_cpu):
        steps, cpu = run(tokens, use_cache)
        # CPU time per decode step (the prefill-only run's CPU time subtracted) is steadier than wall time on a
        # shared machine; both are printed.
        cpu_per_token = (cpu - prefill_cpu) / (tokens - 1)
        print(f"{label:9s} {tokens:4d} tokens: wall {1e3 * steps.mean():8.2f} ms/token (last 16 steps "
              f"{1e3 * steps[-16:].mean():8.2f}), cpu {1e3 * cpu_per_token:8.2f} ms/token")
        return steps.mean(), cpu_per_token

    print(f"backend={backend.name()} hidden={args.hidden} layers={args.layers} prompt={args.prompt_tokens} tokens",
          file=sys.stderr)
    run(4, True)                                     # warm-up (kernel selection, allocator)
    started = time.perf_counter()
    prefill_cpu = min(run(1, True)[1] for _ in range(3))
    short_wall, short_cpu = report("cache", 16, True, prefill_cpu)
    long_wall, long_cpu = report("cache", args.long, True, prefill_cpu)
    report("no cache", 16, False, prefill_cpu)
    report("no cache", 64, False, prefill_cpu)
    print(f"(measured in {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print(f"cache_cpu_latency_ratio_{args.long}_vs_16={long_cpu / short_cpu:.3f}")
    print(f"cache_latency_ratio_{args.long}_vs_16={long_wall / short_wall:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
