"""Decode cost per token with the KV cache stays flat as the output grows: per-token latency at 16 vs 256 tokens.

    python bench/infer.py [--backend torch|mindspore] [--hidden 256] [--layers 4] [--prompt-tokens 64]

Builds a random Qwen2.5-VL checkpoint (mmx.tiny with a wider LLM), turns EOS off so every run generates exactly the
requested number of tokens, and prints the median decode-step latency (the prefill excluded; per step the best of
``--repeats`` runs) of a 16-token and a 256-token greedy run with the cache, the medians of the 256-token run's first
and last 16 steps, and — for contrast — the same without the cache (16 and 64 tokens; each step recomputes the whole
sequence). Finally one decode step with a cache of prompt + 16 and of prompt + 256 tokens, timed in turn 30 times
(interleaved, so both see the same load on a shared machine). Last lines: ratios 256 vs 16 of the interleaved step,
of the long run's last / first 16 steps, and ``cache_latency_ratio_256_vs_16=<float>`` (median step of the two
runs; 1.0 = perfectly flat).
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
    parser.add_argument("--repeats", type=int, default=2)
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
        """Wall seconds of each decode step (the prefill excluded)."""
        config = settings.override(pipeline.settings, max_new_tokens=tokens, use_cache=use_cache, do_sample=False,
                                   eos_token_ids=(), stop_strings=())
        result = generate.generate(pipeline.model, inputs, config)
        assert len(result.token_ids[0]) == tokens
        return np.array(result.step_seconds)

    def measure(tokens, use_cache):
        """Per decode step the fastest of ``--repeats`` runs (a step slowed by another process is dropped)."""
        return np.min([run(tokens, use_cache) for _ in range(args.repeats)], axis=0)

    def show(label, tokens, steps):
        print(f"{label:9s} {tokens:4d} tokens: {1e3 * np.median(steps):8.2f} ms/token (median step; first 16 "
              f"{1e3 * np.median(steps[:16]):8.2f}, last 16 {1e3 * np.median(steps[-16:]):8.2f})")

    print(f"backend={backend.name()} hidden={args.hidden} layers={args.layers} prompt={args.prompt_tokens} tokens, "
          f"best of {args.repeats} runs per step", file=sys.stderr)
    # Warm-up with the shapes of the short runs (PyNative / the allocator prepare each new shape once), so the 16-token
    # numbers are not a first-call measurement.
    run(16, True)
    run(16, False)
    started = time.perf_counter()
    short, long = measure(16, True), measure(args.long, True)
    show("cache", 16, short)
    show("cache", args.long, long)
    for tokens in (16, 64):
        show("no cache", tokens, measure(tokens, False))
    interleaved = interleaved_steps(pipeline.model, args.prompt_tokens, (16, args.long))
    for tokens, steps in interleaved.items():
        print(f"decode step after {tokens:4d} new tokens (interleaved): {1e3 * np.median(steps):8.2f} ms median, "
              f"{1e3 * steps.min():8.2f} ms min")
    print(f"(measured in {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    short_step, long_step = (np.median(interleaved[tokens]) for tokens in (16, args.long))
    print(f"cache_interleaved_step_ratio_{args.long}_vs_16={long_step / short_step:.3f}")
    print(f"cache_last16_vs_first16_of_{args.long}={np.median(long[-16:]) / np.median(long[:16]):.3f}")
    print(f"cache_latency_ratio_{args.long}_vs_16={np.median(long) / np.median(short):.3f}")


def interleaved_steps(model, prompt_tokens, generated, repeats=30):
    """{n: decode-step seconds (repeats,)} with a cache holding prompt + n tokens, the caches' steps taken in turn
    (a, b, a, b, ...) so both see the same machine load: the cleanest view of cost vs cache length."""
    from mmx import nn
    from mmx.models.common.cache import KVCache

    rng = np.random.default_rng(1)
    caches = {}
    with nn.inference_mode():
        for tokens in generated:
            ids = rng.integers(10, 300, (1, prompt_tokens + tokens))
            caches[tokens] = KVCache()
            model(ids, attention_mask=np.ones_like(ids), cache=caches[tokens], logits_to_keep=1)
        times = {tokens: [] for tokens in generated}
        for _ in range(repeats):
            for tokens, cache in caches.items():
                mask = np.ones((1, cache.length + 1), np.int64)
                started = time.perf_counter()
                model(np.array([[42]]), attention_mask=mask, cache=cache, logits_to_keep=1)
                times[tokens].append(time.perf_counter() - started)
    return {tokens: np.array(values) for tokens, values in times.items()}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
