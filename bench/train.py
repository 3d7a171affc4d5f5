"""Training throughput, MFU and memory side by side: mmx-torch vs transformers, mmx-MindSpore vs mmx-torch.

    python bench/train.py [--hidden 384] [--layers 8] [--vocab 151936] [--batch 4] [--image 448] [--prompt 32]
                          [--answer 220] [--steps 3] [--rounds 2] [--dtype auto|bf16|fp32] [--skip-mindspore]
                          [--compiled] [--memory-lengths 512,1024,2048,4096] [--skip-throughput]
                          [--workers mmx-torch-fp32,mmx-mindspore-fp32] [--batches equal,sft]

One random Qwen2.5-VL (mmx.tiny with a wider LLM and Qwen's real 151,936-token vocabulary, tied embeddings like
Qwen2.5-VL-3B: ~72M parameters by default) and two batches of the guides' shape, per row a 448x448 image (256 merged
image tokens), a 32-token prompt and a 220-token answer:

    equal   every position supervised, the image placeholders too: both sides run the same matmuls
            (transformers computes logits at every position, so labelling them all is where its work equals mmx's)
    sft     labels on the answers only: mmx computes the output layer at the supervised positions only
            (mmx.train.loop.prepare_micro_batch), transformers everywhere

Workers, each in its own process (one backend per process), on each batch:

    transformers-torch-<dtype>   HF model (sdpa, padded), torch.autocast when bf16, HF loss, clip, torch AdamW
    mmx-torch-<dtype>            the mmx Trainer's step: fused chunked output layer + cross entropy
                                 (ops.linear_cross_entropy), fused AdamW, autocast when bf16 (fp32 master weights),
                                 the trainer's host allocator setting (training.host_memory: auto = keep in one
                                 process) like every mmx
                                 worker; the transformers worker keeps glibc's defaults, as its Trainer does
    mmx-torch-<dtype>-logits     the same with the pre-fusion loss: (N, V) float32 logits, then cross entropy
    mmx-torch-<dtype>-compiled   (--compiled) the default step with training.compile's regions (torch.compile on
                                 each decoder layer and vision block)
    mmx-torch-fp32               the default step in fp32 (only when <dtype> is bf16)
    mmx-mindspore-fp32           mmx on MindSpore (fp32: MindSpore has no bf16 CPU kernels)

Each worker measures its own matmul peak (2048², the dtype it computes in, best of 3) in its process before
building the model and again after its steps (the larger counts), and times ``--steps`` optimizer steps after one
warm-up step; every worker runs ``--rounds`` times, interleaved, and its
best step time and best peak count (other load on a shared machine only ever slows a run down). Reported per worker:
tokens/s (every real token of the batch), the executed FLOPs of the step (mmx.train.flops: the same counter the
trainer logs; transformers' output layer counted at every position, which is what it computes), MFU = FLOPs / step
time / the peak measured in that run, and the peak RSS of the process.

``--memory-lengths``: peak RSS of one training step (mmx-torch fp32, one text row of L tokens, every position
supervised) per length, the fused loss and the logits loss side by side, each in a fresh process.

The last lines are the ratios at equal work: ``mmx_torch_vs_transformers_<dtype>=<x>`` (tokens/s),
``mmx_mindspore_vs_mmx_torch_fp32=<x>`` and ``mmx_torch_mfu_equal_work=<x>`` (a fraction of the measured peak);
the SFT batch's ratios come just before them with a ``_sft`` suffix.

``--dtype auto`` (default) compares in bf16 where this machine's bf16 matmul is faster than fp32 (GPUs, CPUs with
AMX), else in fp32: on CPUs without bf16 matrix units (e.g. AMD EPYC with AVX2 only) torch's bf16 matmul runs at
~0.2 GFLOP/s against ~18 fp32, which would time the fallback kernel, not either trainer.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKERS = ("transformers-torch-{dtype}", "mmx-torch-{dtype}", "mmx-torch-{dtype}-logits", "mmx-torch-{dtype}-compiled",
           "mmx-torch-fp32", "mmx-mindspore-fp32")
BATCHES = ("equal", "sft")
QWEN_VOCAB_SIZE = 151936   # Qwen2/2.5-VL's embedding rows


def build_checkpoint(out_dir, hidden, layers, vocab):
    from mmx.tiny import make_tiny_checkpoint

    heads = max(hidden // 64, 2)
    return make_tiny_checkpoint(out_dir, "qwen2_5_vl", tied=True, text_vocab_size=vocab, text_hidden_size=hidden,
                                text_num_hidden_layers=layers, text_intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                                text_num_attention_heads=heads, text_num_key_value_heads=max(heads // 3, 1),
                                mrope_section=_mrope(hidden // heads), vision_hidden_size=128,
                                vision_intermediate_size=256, vision_num_heads=2, vision_out_hidden_size=hidden)


def _mrope(head_dim):
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def make_batch(hf_dir, batch, image, prompt, answer, supervise, vocab):
    """A processor-made SFT batch: per row an ``image``² random picture, ``prompt`` random text tokens, then
    ``answer`` random tokens; labels on the answer (``supervise="answer"``), on every text token ("all"), or on
    every position, image placeholders included ("every": both sides compute the output layer everywhere)."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(hf_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (image, image, 3), dtype=np.uint8)) for _ in range(batch)]
    # the tiny processor caps images at 56x84 pixels; the real Qwen processors allow up to 12.8M
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"] * batch, images=images,
                       size={"shortest_edge": 56 * 56, "longest_edge": image * image}, return_tensors="np")
    image_ids = np.asarray(inputs["input_ids"])
    text = rng.integers(10, vocab, (batch, prompt + answer))
    ids = np.concatenate([image_ids, text], axis=1).astype(np.int64)
    labels = np.full_like(ids, -100)
    first = {"answer": image_ids.shape[1] + prompt, "all": image_ids.shape[1], "every": 0}[supervise]
    labels[:, first:] = ids[:, first:]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
            "pixel_values": np.asarray(inputs["pixel_values"], np.float32),
            "image_grid_thw": np.asarray(inputs["image_grid_thw"], np.int64)}


def matmul_peak_torch(dtype_name, size=1024, repeats=5):
    """Best-of-``repeats`` FLOP/s of a ``size``² torch matmul in ``dtype_name`` on the CPU."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_transformers(hf_dir, batch, steps, dtype_name):
    import torch
    from transformers import AutoModelForImageTextToText

    peak = matmul_peak_torch(dtype_name, 2048, 3)  # before the model: measured after training steps it reads ~3x lower
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    inputs = {key: torch.from_numpy(value) for key, value in batch.items()}
    inputs["mm_token_type_ids"] = torch.from_numpy(
        np.where(batch["input_ids"] == model.config.image_token_id, 1, 0))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_name == "bfloat16"):
            loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    loss, seconds = _time_steps(step, steps)
    # the peak again after the steps: on a shared machine one 3-matmul probe can land in a burst of other load
    return sum(p.numel() for p in params), loss, seconds, max(peak, matmul_peak_torch(dtype_name, 2048, 3))


def trainable_model(hf_dir):
    """The bench checkpoint as the mmx trainer holds it: (model, the backend's train module, its trainable
    parameters, a fused AdamW over them)."""
    from mmx import backend, models
    from mmx.train.finetune import read_weights

    _, tensors = read_weights(hf_dir)
    model = models.build(hf_dir)
    models.load_mm_state(model, tensors)
    del tensors
    train = backend.get().train
    named = train.trainable_parameters(model)
    return model, train, [p for _, p in named], train.AdamW(named)


def run_mmx(hf_dir, batch, steps, precision, loss="fused", compiled=False):
    """The mmx Trainer's step on ``batch``: ``loss`` "fused" (the default: the model's chunked output layer + cross
    entropy) or "logits" (the (N, V) float32 logits, then cross entropy); ``compiled``: torch.compile per decoder
    layer. → (trainable parameters, first loss, best step seconds, peak FLOP/s)."""
    from mmx import ops
    from mmx.train.config import TRAINING_DEFAULTS
    from mmx.train.host_memory import set_host_memory
    from mmx.train.loop import lm_loss, prepare_micro_batch, train_step
    from mmx.train.loss import token_weights, weighted_lm_loss
    from mmx.train.metrics import measure_matmul_peak

    set_host_memory(TRAINING_DEFAULTS["host_memory"])   # what mmx finetune sets (transformers: glibc's defaults)
    peak = measure_matmul_peak(2048, 3, ops.bfloat16 if precision == "bf16" else ops.float32)  # before the model
    model, train, params, optimizer = trainable_model(hf_dir)
    if compiled:   # training.compile's regions, as torchtitan does: each decoder layer / vision block compiled
        from mmx.models.qwen2_5_vl.plan import FULLY_SHARD_UNITS
        from mmx.train.loop import shard_unit_names
        train.compile_regions(model, shard_unit_names(model, FULLY_SHARD_UNITS))
    prepared = [prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])]

    def loss_fn(item):
        if loss == "fused":
            return lm_loss(model, *item)
        return weighted_lm_loss(model(**item[0]), item[1], item[2])

    def step():
        return train_step(train, params, optimizer, loss_fn, prepared, 1e-5, 1.0, precision)[0]

    loss, seconds = _time_steps(step, steps)
    # the peak again after the steps: on a shared machine one 3-matmul probe can land in a burst of other load
    peak = max(peak, measure_matmul_peak(2048, 3, ops.bfloat16 if precision == "bf16" else ops.float32))
    return sum(int(np.prod(p.shape)) for p in params), loss, seconds, peak


def _time_steps(step, steps):
    """(loss of the first step, best time of the ``steps`` after it): the first step is the warm-up (allocator,
    kernel selection, lazy imports) and its loss, from the same initial weights on every worker, shows both sides
    compute the same thing."""
    first_loss = step()
    return first_loss, min(_timed(step) for _ in range(steps))


def peak_rss_mb():
    """This process's peak resident memory so far (ru_maxrss), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name, hf_dir, batch_path, steps):
    batch = dict(np.load(batch_path))
    precision = "bf16" if "-bf16" in name else "fp32"
    if name.startswith("transformers"):
        params, loss, seconds, peak = run_transformers(hf_dir, batch, steps,
                                                       "bfloat16" if precision == "bf16" else "float32")
    else:
        params, loss, seconds, peak = run_mmx(hf_dir, batch, steps, precision,
                                              "logits" if name.endswith("-logits") else "fused",
                                              name.endswith("-compiled"))
    print(json.dumps({"worker": name, "params": params, "first_loss": loss, "step_s": seconds,
                      "tokens": int(batch["attention_mask"].sum()), "peak_tflops": peak / 1e12,
                      "peak_rss_mb": peak_rss_mb()}))


def step_flops(hf_dir, batch, every_position):
    """Executed FLOPs of one training step on ``batch`` (mmx.train.flops, everything trained): the output layer at
    the supervised positions (mmx), or at every position (``every_position``: what transformers computes)."""
    os.environ.setdefault("MMX_BACKEND", "torch")
    from mmx import models, nn
    from mmx.train.flops import StepFlops

    model = models.build(hf_dir)
    shapes = [(name, tuple(p.shape)) for name, p in nn.named_parameters(model)]
    counter = StepFlops(model.config, shapes, [name for name, _ in shapes])
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    return counter.micro_batch(batch["input_ids"].shape, None if every_position else supervised,
                               image_grid_thw=batch["image_grid_thw"])


def choose_dtype(requested):
    """``requested``, or for "auto" bf16 when this machine's bf16 matmul beats fp32 (a 256² probe), else fp32."""
    if requested != "auto":
        return requested
    bf16, fp32 = matmul_peak_torch("bfloat16", 256, 3), matmul_peak_torch("float32", 256, 3)
    chosen = "bf16" if bf16 > fp32 else "fp32"
    print(f"--dtype auto: bf16 matmul {bf16 / 1e9:.2f} GFLOP/s, fp32 {fp32 / 1e9:.2f} GFLOP/s -> {chosen}")
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=QWEN_VOCAB_SIZE)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image", type=int, default=448, help="image side in pixels (448: 256 image tokens)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per row (not supervised in sft)")
    parser.add_argument("--answer", type=int, default=220, help="answer tokens per row (supervised)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker run (best counts)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every worker, interleaved (best counts)")
    parser.add_argument("--skip-mindspore", action="store_true")
    parser.add_argument("--workers", default="",
                        help="comma-separated worker names to run (default all), e.g. mmx-torch-fp32,mmx-mindspore-fp32")
    parser.add_argument("--batches", default=",".join(BATCHES), help="comma-separated batches to run: equal,sft")
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile per decoder layer")
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory sweep")
    parser.add_argument("--memory-lengths", default="512,1024,2048,4096",
                        help="comma-separated row lengths of the peak-RSS sweep ('' skips it)")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="dtype of the mmx-torch vs transformers comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dir, args.batch_file, args.steps)
    if args.memory:
        return memory_worker(args.memory, args.dir, int(args.batch_file))

    dtype = choose_dtype(args.dtype)
    work = tempfile.mkdtemp(prefix="mmx_bench_train_")
    try:
        hf_dir = build_checkpoint(os.path.join(work, "hf"), args.hidden, args.layers, args.vocab)
        if args.memory_lengths:
            memory_sweep(hf_dir, [int(n) for n in args.memory_lengths.split(",")])
        if not args.skip_throughput:   # last: it ends with the ratio lines
            compare(args, dtype, hf_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memory_worker(loss, hf_dir, length):
    """One fp32 training step of mmx-torch on one text row of ``length`` tokens, every position supervised, with
    the ``loss`` path; prints the peak RSS (MiB) and the step's seconds."""
    from mmx.models.common.config import read_hf_config

    rng = np.random.default_rng(0)
    vocab = (read_hf_config(hf_dir).get("text_config") or read_hf_config(hf_dir))["vocab_size"]
    ids = rng.integers(10, vocab, (1, length)).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()}
    from mmx.train.loop import lm_loss, prepare_micro_batch, train_step
    from mmx.train.loss import token_weights, weighted_lm_loss

    model, train, params, optimizer = trainable_model(hf_dir)
    prepared = [prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])]

    def loss_fn(item):
        if loss == "fused":
            return lm_loss(model, *item)
        return weighted_lm_loss(model(**item[0]), item[1], item[2])

    start = time.perf_counter()
    train_step(train, params, optimizer, loss_fn, prepared, 1e-5, 1.0, "fp32")
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "step_s": time.perf_counter() - start}))


def memory_sweep(hf_dir, lengths):
    """Peak RSS of one step per row length, fused vs logits loss, each in a fresh torch process."""
    print(f"\npeak RSS of one mmx-torch fp32 training step, one text row, every position supervised "
          f"(ru_maxrss, fresh process each):")
    print(f"{'tokens':>7} {'logits loss MiB':>16} {'fused loss MiB':>15} {'fused/logits':>13} "
          f"{'logits step s':>14} {'fused step s':>13}")
    for length in lengths:
        row = {}
        for loss in ("logits", "fused"):
            run = subprocess.run([sys.executable, __file__, "--memory", loss, "--dir", hf_dir, "--batch-file",
                                  str(length)], capture_output=True, text=True,
                                 env=dict(os.environ, MMX_BACKEND="torch"))
            if run.returncode:
                print(f"memory {loss} {length} failed:\n{run.stderr[-2000:]}", file=sys.stderr)
                continue
            row[loss] = json.loads(run.stdout.strip().splitlines()[-1])
        if len(row) == 2:
            print(f"{length:7d} {row['logits']['peak_rss_mb']:16.0f} {row['fused']['peak_rss_mb']:15.0f} "
                  f"{row['fused']['peak_rss_mb'] / row['logits']['peak_rss_mb']:13.2f} "
                  f"{row['logits']['step_s']:14.2f} {row['fused']['step_s']:13.2f}")
        print(f"peak_rss_ratio_fused_vs_logits_{length}="
              f"{row['fused']['peak_rss_mb'] / row['logits']['peak_rss_mb']:.3f}" if len(row) == 2 else "")


def run_worker(name, hf_dir, batch_file, steps):
    """One worker in its own process (its backend chosen by MMX_BACKEND): its JSON record, or None if it failed."""
    backend = "mindspore" if "mindspore" in name else "torch"
    run = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", hf_dir, "--batch-file", batch_file,
                          "--steps", str(steps)], capture_output=True, text=True,
                         env=dict(os.environ, MMX_BACKEND=backend))
    if run.returncode:
        print(f"{name} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare(args, dtype, hf_dir):
    """Make both batches, run every worker on each, print each one's line and the ratios."""
    workers = [name for name in dict.fromkeys(name.format(dtype=dtype) for name in WORKERS)
               if not (name.startswith("mmx-mindspore") and args.skip_mindspore)
               and not (name.endswith("-compiled") and not args.compiled)
               and (not args.workers or name in args.workers.split(","))]
    flops, results = {}, {}
    batches = [kind for kind in BATCHES if kind in args.batches.split(",")]
    for kind in batches:
        batch = make_batch(hf_dir, args.batch, args.image, args.prompt, args.answer,
                           "every" if kind == "equal" else "answer", args.vocab)
        np.savez(os.path.join(hf_dir, f"batch_{kind}.npz"), **batch)
        flops[kind] = {"mmx": step_flops(hf_dir, batch, False), "transformers": step_flops(hf_dir, batch, True)}
        supervised = int((batch["labels"][:, 1:] != -100).sum())
        rows, length = batch["input_ids"].shape
        image_tokens = int(batch["image_grid_thw"][0].prod()) // 4
        print(f"{kind} batch {rows}x{length}: {image_tokens} image tokens per row, {supervised} supervised targets "
              f"({100 * supervised / batch['input_ids'].size:.0f}%); executed FLOPs per step: mmx "
              f"{flops[kind]['mmx'] / 1e9:.1f} G, transformers {flops[kind]['transformers'] / 1e9:.1f} G")
    for _ in range(args.rounds):  # interleaved rounds: a burst of other load on the machine hits every worker
        for kind in batches:
            for name in workers:
                result = run_worker(name, hf_dir, os.path.join(hf_dir, f"batch_{kind}.npz"), args.steps)
                if result is None:
                    continue
                best = results.setdefault((kind, name), result)
                best["step_s"] = min(best["step_s"], result["step_s"])
                best["peak_tflops"] = max(best["peak_tflops"], result["peak_tflops"])
                best["peak_rss_mb"] = max(best["peak_rss_mb"], result["peak_rss_mb"])
    for (kind, name), r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["step_s"]
        r["flops"] = flops[kind]["transformers" if name.startswith("transformers") else "mmx"]
        r["mfu"] = r["flops"] / r["step_s"] / (r["peak_tflops"] * 1e12)
        print(f"{kind:5s} {name:28s} step {r['step_s']:7.3f} s  loss {r['first_loss']:.6f}  "
              f"tokens/s {r['tokens_per_s']:7.1f}  {r['flops'] / 1e9:8.1f} GFLOP  peak {r['peak_tflops']:6.3f} "
              f"TFLOP/s  MFU {100 * r['mfu']:5.1f}%  peak RSS {r['peak_rss_mb']:6.0f} MiB")
    lines = []
    for kind, suffix in (("sft", "_sft"), ("equal", "")):
        ours, theirs = (kind, f"mmx-torch-{dtype}"), (kind, f"transformers-torch-{dtype}")
        if ours in results and theirs in results:
            lines.append(f"mmx_torch_vs_transformers_{dtype}{suffix}="
                         f"{results[ours]['tokens_per_s'] / results[theirs]['tokens_per_s']:.3f}")
        torch_fp32, mindspore = (kind, "mmx-torch-fp32"), (kind, "mmx-mindspore-fp32")
        if torch_fp32 in results and mindspore in results:
            lines.append(f"mmx_mindspore_vs_mmx_torch_fp32{suffix}="
                         f"{results[mindspore]['tokens_per_s'] / results[torch_fp32]['tokens_per_s']:.3f}")
        if kind == "equal" and ours in results:
            lines.append(f"mmx_torch_mfu_equal_work={results[ours]['mfu']:.3f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
