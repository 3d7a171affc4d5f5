"""Training throughput side by side: mmx-torch vs transformers, and mmx-MindSpore vs mmx-torch (fp32).

    python bench/train.py [--hidden 384] [--layers 8] [--vocab 151936] [--batch 4] [--image 448] [--prompt 32]
                          [--answer 220] [--supervise answer|all] [--steps 3] [--dtype auto|bf16|fp32]
                          [--skip-mindspore]

One random Qwen2.5-VL (mmx.tiny with a wider LLM and Qwen's real 151,936-token vocabulary, tied embeddings like
Qwen2.5-VL-3B: ~72M parameters by default) and one supervised fine-tuning batch, the shape of the guides' data: per
row a 448x448 image (256 merged image tokens), a 32-token prompt and a 220-token answer, labels on the answer only
(``--supervise all`` labels every text token instead: the worst case for mmx, see below). Four workers train it,
each in its own process (one backend per process):

    transformers-torch-<dtype>   HF model (sdpa), torch.autocast when bf16, HF loss, clip, torch AdamW
    mmx-torch-<dtype>            mmx Trainer step (autocast when bf16, fp32 master weights)
    mmx-torch-fp32               the same in fp32 (only when <dtype> is bf16)
    mmx-mindspore-fp32           mmx on MindSpore (fp32: MindSpore has no bf16 CPU kernels)

Both sides run the same model, batch, optimizer and clipping, and compute the same loss. Where they differ is work
done: transformers computes logits (and their float32 copy for the loss) at every position, mmx only at the
supervised ones (mmx.train.loop.prepare_micro_batch). With a 150k vocabulary the output layer is most of a small
VLM's FLOPs, so that is where mmx's speed comes from; with every token supervised both do the same matmuls and run
at about the same speed on CPU (both are matmul-bound).

Each worker first measures its own matmul peak (1024², the dtype it computes in) in its process, then times
``--steps`` optimizer steps after one warm-up step; every worker runs ``--rounds`` times, interleaved, and its best
step time and best peak count (other load on a shared machine only ever slows a run down). Reported: tokens/s (every
real token of the batch) and MFU (6 × parameters FLOPs per token, the usual model-FLOPs convention, the same
numerator for both sides).
The last lines are the ratios: ``mmx_torch_vs_transformers_<dtype>=<x>`` (target ≥ 1.3) and
``mmx_mindspore_vs_mmx_torch_fp32=<x>``.

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

WORKERS = ("transformers-torch-{dtype}", "mmx-torch-{dtype}", "mmx-torch-fp32", "mmx-mindspore-fp32")
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
    ``answer`` random tokens; labels on the answer (``supervise="answer"``) or on every text token ("all")."""
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
    first = image_ids.shape[1] + (prompt if supervise == "answer" else 0)
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

    peak = matmul_peak_torch(dtype_name)  # before the model: measured after training steps it reads ~3x lower here
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

    return sum(p.numel() for p in params), *_time_steps(step, steps), peak


def run_mmx(hf_dir, batch, steps, precision):
    from mmx import backend, models, ops
    from mmx.train.finetune import read_weights
    from mmx.train.loop import prepare_micro_batch, train_step
    from mmx.train.loss import token_weights, weighted_lm_loss
    from mmx.train.metrics import measure_matmul_peak

    peak = measure_matmul_peak(1024, 5, ops.bfloat16 if precision == "bf16" else ops.float32)  # before the model
    _, tensors = read_weights(hf_dir)
    model = models.build(hf_dir)
    models.load_mm_state(model, tensors)
    train = backend.get().train
    named = train.trainable_parameters(model)
    params = [p for _, p in named]
    optimizer = train.AdamW(named)
    prepared = [prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])]

    def loss_fn(item):
        return weighted_lm_loss(model(**item[0]), item[1], item[2])

    def step():
        return train_step(train, params, optimizer, loss_fn, prepared, 1e-5, 1.0, precision)[0]

    return sum(int(np.prod(p.shape)) for p in params), *_time_steps(step, steps), peak


def _time_steps(step, steps):
    """(loss of the first step, best time of the ``steps`` after it): the first step is the warm-up (allocator,
    kernel selection, lazy imports) and its loss, from the same initial weights on every worker, shows both sides
    compute the same thing."""
    first_loss = step()
    return first_loss, min(_timed(step) for _ in range(steps))


def worker(name, hf_dir, batch_path, steps):
    batch = dict(np.load(batch_path))
    if name.startswith("transformers"):
        dtype_name = "bfloat16" if name.endswith("bf16") else "float32"
        params, loss, seconds, peak = run_transformers(hf_dir, batch, steps, dtype_name)
    else:
        params, loss, seconds, peak = run_mmx(hf_dir, batch, steps, "bf16" if name.endswith("bf16") else "fp32")
    print(json.dumps({"worker": name, "params": params, "first_loss": loss, "step_s": seconds,
                      "tokens": int(batch["attention_mask"].sum()), "peak_tflops": peak / 1e12}))


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
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per row (not supervised)")
    parser.add_argument("--answer", type=int, default=220, help="answer tokens per row (supervised)")
    parser.add_argument("--supervise", choices=["answer", "all"], default="answer")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker run (best counts)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every worker, interleaved (best counts)")
    parser.add_argument("--skip-mindspore", action="store_true")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="dtype of the mmx-torch vs transformers comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dir, os.path.join(args.dir, "batch.npz"), args.steps)

    dtype = choose_dtype(args.dtype)
    work = tempfile.mkdtemp(prefix="mmx_bench_train_")
    try:
        compare(args, dtype, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_worker(name, hf_dir, steps):
    """One worker in its own process (its backend chosen by MMX_BACKEND): its JSON record, or None if it failed."""
    backend = "mindspore" if "mindspore" in name else "torch"
    run = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", hf_dir, "--steps", str(steps)],
                         capture_output=True, text=True, env=dict(os.environ, MMX_BACKEND=backend))
    if run.returncode:
        print(f"{name} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare(args, dtype, work):
    """Build the model and batch under ``work``, run every worker, print each one's line and the ratios."""
    hf_dir = build_checkpoint(os.path.join(work, "hf"), args.hidden, args.layers, args.vocab)
    batch = make_batch(hf_dir, args.batch, args.image, args.prompt, args.answer, args.supervise, args.vocab)
    np.savez(os.path.join(hf_dir, "batch.npz"), **batch)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    rows, length = batch["input_ids"].shape
    image_tokens = int(batch["image_grid_thw"][0].prod()) // 4
    print(f"batch {rows}x{length}: {image_tokens} image tokens per row, {supervised} supervised targets "
          f"({100 * supervised / batch['input_ids'].size:.0f}%)")
    workers = [name for name in dict.fromkeys(name.format(dtype=dtype) for name in WORKERS)
               if not (name.startswith("mmx-mindspore") and args.skip_mindspore)]
    results = {}
    for _ in range(args.rounds):  # interleaved rounds: a burst of other load on the machine hits every worker
        for name in workers:
            result = run_worker(name, hf_dir, args.steps)
            if result is None:
                continue
            best = results.setdefault(name, result)
            best["step_s"] = min(best["step_s"], result["step_s"])
            best["peak_tflops"] = max(best["peak_tflops"], result["peak_tflops"])
    for name, r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["step_s"]
        r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / (r["peak_tflops"] * 1e12)
        print(f"{name:26s} params {r['params'] / 1e6:6.1f}M  step {r['step_s']:7.3f} s  loss {r['first_loss']:.6f}  "
              f"tokens/s {r['tokens_per_s']:7.1f}  peak {r['peak_tflops']:6.3f} TFLOP/s  MFU {100 * r['mfu']:5.1f}%")
    ours, theirs = f"mmx-torch-{dtype}", f"transformers-torch-{dtype}"
    if {ours, theirs} <= set(results):
        ratio = results[ours]["tokens_per_s"] / results[theirs]["tokens_per_s"]
        print(f"mmx_torch_vs_transformers_{dtype}={ratio:.3f}")
    if {"mmx-torch-fp32", "mmx-mindspore-fp32"} <= set(results):
        ratio = results["mmx-mindspore-fp32"]["tokens_per_s"] / results["mmx-torch-fp32"]["tokens_per_s"]
        print(f"mmx_mindspore_vs_mmx_torch_fp32={ratio:.3f}")


if __name__ == "__main__":
    main()
