"""Training throughput side by side: mmx-torch vs transformers (bf16) and mmx-MindSpore vs mmx-torch (fp32).

    python bench/train.py [--hidden 768] [--layers 8] [--batch 4] [--seq 256] [--steps 3] [--skip-mindspore]
                          [--hf-dtype bf16|fp32]

One random Qwen2.5-VL (mmx.tiny with a wider LLM, ~50–100M parameters) and one batch (text + one 56x56 image per
row, every token supervised) are trained by four workers, each in its own process (one backend per process):

    transformers-torch-bf16   HF model, torch.autocast(bf16), HF loss, clip, torch AdamW (fp32 master weights)
    mmx-torch-bf16            mmx Trainer step (autocast bf16, fp32 master weights)
    mmx-torch-fp32            the same in fp32
    mmx-mindspore-fp32        mmx on MindSpore (fp32: MindSpore has no bf16 CPU kernels)

Each worker measures its own matmul peak (bf16 or fp32, 1024² on the same device) in the same process, times
``--steps`` optimizer steps after one warm-up step, and reports tokens/s and MFU (6 × parameters FLOPs per token).
The last lines are the ratios: ``mmx_torch_vs_transformers_bf16=<x>`` (target ≥ 1.3) and
``mmx_mindspore_vs_mmx_torch_fp32=<x>``.

bf16 is only fast on CPUs with bf16 matrix units (AMX); on others (e.g. AMD EPYC without AVX512-BF16, where torch's
bf16 1024² matmul runs at ~0.2 GFLOP/s against ~18 fp32) compare mmx-torch and transformers with ``--hf-dtype fp32``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKERS = ("transformers-torch-{hf}", "mmx-torch-{hf}", "mmx-torch-fp32", "mmx-mindspore-fp32")


def build_checkpoint(out_dir, hidden, layers):
    from mmx.tiny import make_tiny_checkpoint

    heads = max(hidden // 64, 2)
    return make_tiny_checkpoint(out_dir, "qwen2_5_vl", text_hidden_size=hidden, text_num_hidden_layers=layers,
                                text_intermediate_size=int(hidden * 8 / 3) // 64 * 64, text_num_attention_heads=heads,
                                text_num_key_value_heads=max(heads // 4, 1), mrope_section=_mrope(hidden // heads),
                                vision_hidden_size=128, vision_intermediate_size=256, vision_num_heads=2,
                                vision_out_hidden_size=hidden)


def _mrope(head_dim):
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def make_batch(hf_dir, batch, seq):
    """A processor-made batch: one 56x56 image + random text per row, all text tokens supervised."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(hf_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(batch)]
    text = "<|vision_start|><|image_pad|><|vision_end|>"
    inputs = processor(text=[text] * batch, images=images, return_tensors="np")
    image_ids = np.asarray(inputs["input_ids"])
    filler = rng.integers(10, 290, (batch, seq - image_ids.shape[1]))
    ids = np.concatenate([image_ids, filler], axis=1).astype(np.int64)
    labels = np.where(np.isin(ids, [image_ids[0, 0], image_ids[0, 1], image_ids[0, -1]]), -100, ids)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
            "pixel_values": np.asarray(inputs["pixel_values"], np.float32),
            "image_grid_thw": np.asarray(inputs["image_grid_thw"], np.int64)}


def matmul_peak_torch(dtype_name, size=1024, repeats=5):
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

    return sum(p.numel() for p in params), _time_steps(step, steps), matmul_peak_torch(dtype_name)


def run_mmx(hf_dir, batch, steps, precision):
    from mmx import backend, ops
    from mmx.train.finetune import read_weights
    from mmx.train.loop import model_inputs, train_step
    from mmx.train.loss import shifted_targets, token_weights, weighted_lm_loss
    from mmx.train.metrics import measure_matmul_peak
    from mmx import models

    _, tensors = read_weights(hf_dir)
    model = models.build(hf_dir)
    models.load_mm_state(model, tensors)
    train = backend.get().train
    named = train.trainable_parameters(model)
    params = [p for _, p in named]
    optimizer = train.AdamW(named)
    prepared = [(model_inputs(model, batch), ops.tensor(shifted_targets(batch)),
                 ops.tensor(token_weights([batch], "per_token")[0]))]

    def loss_fn(item):
        return weighted_lm_loss(model(**item[0]), item[1], item[2])

    def step():
        train_step(train, params, optimizer, loss_fn, prepared, 1e-5, 1.0, precision)

    peak = measure_matmul_peak(1024, 5, ops.bfloat16 if precision == "bf16" else ops.float32)
    return sum(int(np.prod(p.shape)) for p in params), _time_steps(step, steps), peak


def _time_steps(step, steps):
    step()  # warm-up: allocator, kernel selection, lazy imports
    return min(_timed(step) for _ in range(steps))


def worker(name, hf_dir, batch_path, steps):
    batch = dict(np.load(batch_path))
    if name.startswith("transformers"):
        dtype_name = "bfloat16" if name.endswith("bf16") else "float32"
        params, seconds, peak = run_transformers(hf_dir, batch, steps, dtype_name)
    else:
        params, seconds, peak = run_mmx(hf_dir, batch, steps, "bf16" if name.endswith("bf16") else "fp32")
    tokens = int(batch["attention_mask"].sum())
    tokens_per_s = tokens / seconds
    print(json.dumps({"worker": name, "params": params, "step_s": seconds, "tokens_per_s": tokens_per_s,
                      "peak_tflops": peak / 1e12, "mfu": 6 * params * tokens_per_s / peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-mindspore", action="store_true")
    parser.add_argument("--hf-dtype", choices=["bf16", "fp32"], default="bf16",
                        help="dtype of the mmx-torch vs transformers comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dir, os.path.join(args.dir, "batch.npz"), args.steps)

    work = tempfile.mkdtemp(prefix="mmx_bench_train_")
    hf_dir = build_checkpoint(os.path.join(work, "hf"), args.hidden, args.layers)
    np.savez(os.path.join(hf_dir, "batch.npz"), **make_batch(hf_dir, args.batch, args.seq))
    results = {}
    workers = list(dict.fromkeys(name.format(hf=args.hf_dtype) for name in WORKERS))
    for name in workers:
        if name.startswith("mmx-mindspore") and args.skip_mindspore:
            continue
        backend = "mindspore" if "mindspore" in name else "torch"
        run = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", hf_dir, "--steps", str(args.steps)],
                             capture_output=True, text=True, env=dict(os.environ, MMX_BACKEND=backend))
        if run.returncode:
            print(f"{name} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:26s} params {r['params'] / 1e6:6.1f}M  step {r['step_s']:7.3f} s  "
              f"tokens/s {r['tokens_per_s']:9.1f}  peak {r['peak_tflops']:6.3f} TFLOP/s  MFU {100 * r['mfu']:5.1f}%")
    ours, theirs = f"mmx-torch-{args.hf_dtype}", f"transformers-torch-{args.hf_dtype}"
    if {ours, theirs} <= set(results):
        ratio = results[ours]["tokens_per_s"] / results[theirs]["tokens_per_s"]
        print(f"mmx_torch_vs_transformers_{args.hf_dtype}={ratio:.3f}")
    if {"mmx-torch-fp32", "mmx-mindspore-fp32"} <= set(results):
        ratio = results["mmx-mindspore-fp32"]["tokens_per_s"] / results["mmx-torch-fp32"]["tokens_per_s"]
        print(f"mmx_mindspore_vs_mmx_torch_fp32={ratio:.3f}")


if __name__ == "__main__":
    main()
