"""Conversion throughput and memory on a generated multi-shard checkpoint (issue 4's benchmark).

Builds a Qwen2-VL-shaped bf16 HF checkpoint of about ``--size-gb`` GB split into ``--shard-mb`` MB safetensors
shards (+ model.safetensors.index.json; random bits, generated tensor by tensor), then times, each in a fresh
subprocess:

* baseline: plain safetensors read + write of the same shards (``safetensors.torch.load_file`` / ``save_file``,
  then fsync, as mmx fsyncs what it writes; the no-fsync time is printed too);
* ``mmx convert hf_to_mm`` (tp 1 and tp 2 / pp 2) and ``mm_to_hf``.

It prints throughput = bytes / seconds of the best run, the ratio to the baseline's best (target ≥ 0.7), the ratio
of medians, and each run's peak RSS (VmHWM) against the largest shard (target ≤ 1.5×). Runs go round-robin so
that changing machine load hits every variant alike; on a shared machine single runs vary several-fold, hence
best-of-N.

    python bench/convert.py [--size-gb 1.2] [--shard-mb 400] [--work-dir /tmp/mmx-bench-convert] [--repeat 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from mmx.checkpoint.safetensors_io import SafetensorsWriter

# Peak RSS of this process's own memory: VmHWM (ru_maxrss would include the parent's RSS at fork time, which
# Linux carries across exec).
PEAK = """
def PEAK():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

BASELINE = PEAK + """
import os, sys, time
from safetensors.torch import load_file, save_file
src, dst, fsync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
os.makedirs(dst, exist_ok=True)
start = time.perf_counter()
for name in sorted(os.listdir(src)):
    if name.endswith(".safetensors"):
        tensors = load_file(os.path.join(src, name))
        save_file(tensors, os.path.join(dst, name), metadata={"format": "pt"})
        del tensors
        if fsync:
            fd = os.open(os.path.join(dst, name), os.O_RDONLY); os.fsync(fd); os.close(fd)
print(time.perf_counter() - start, PEAK())
"""

CONVERT = PEAK + """
import sys, time
from mmx.convert.drivers import hf_to_mm, mm_to_hf
kind, src, dst = sys.argv[1:4]
start = time.perf_counter()
if kind == "hf_to_mm":
    hf_to_mm(src, dst, tp_size=int(sys.argv[4]), vit_pp_layers=sys.argv[5], llm_pp_layers=sys.argv[6])
else:
    mm_to_hf(src, dst, max_shard_bytes=int(sys.argv[4]))
print(time.perf_counter() - start, PEAK())
"""


def bench_config(size_gb):
    """A Qwen2-VL config whose bf16 weights take about size_gb GB (LLM layers scale with the size)."""
    hidden, intermediate, vocab = 2048, 11008, 32000
    per_layer = 2 * (hidden * (hidden + 2 * 256) + 2 * 256 + hidden + hidden * hidden + 3 * hidden * intermediate
                     + 2 * hidden)
    fixed = 2 * (2 * vocab * hidden) + 2 * 4 * 12 * 1280 * 1280
    layers = max(2, round((size_gb * 1e9 - fixed) / per_layer))
    layers += layers % 2
    from transformers import Qwen2VLConfig   # a real config.json (only the bench imports transformers)

    config = Qwen2VLConfig(
        tie_word_embeddings=False,
        text_config={"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
                     "num_hidden_layers": layers, "num_attention_heads": 16, "num_key_value_heads": 2,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        vision_config={"depth": 4, "embed_dim": 1280, "hidden_size": hidden, "num_heads": 16, "mlp_ratio": 4})
    return json.loads(config.to_json_string())


def hf_shapes(config):
    """[(HF name, shape)] of a Qwen2-VL checkpoint in file order."""
    text, vision = config["text_config"], config["vision_config"]
    hidden, dim, inter = text["hidden_size"], vision["embed_dim"], text["intermediate_size"]
    head = hidden // text["num_attention_heads"]
    kv = text["num_key_value_heads"] * head
    shapes = [("model.visual.patch_embed.proj.weight", (dim, 3, 2, 14, 14))]
    for i in range(vision["depth"]):
        block = f"model.visual.blocks.{i}."
        shapes += [(block + "norm1.weight", (dim,)), (block + "norm1.bias", (dim,)),
                   (block + "attn.qkv.weight", (3 * dim, dim)), (block + "attn.qkv.bias", (3 * dim,)),
                   (block + "attn.proj.weight", (dim, dim)), (block + "attn.proj.bias", (dim,)),
                   (block + "norm2.weight", (dim,)), (block + "norm2.bias", (dim,)),
                   (block + "mlp.fc1.weight", (4 * dim, dim)), (block + "mlp.fc1.bias", (4 * dim,)),
                   (block + "mlp.fc2.weight", (dim, 4 * dim)), (block + "mlp.fc2.bias", (dim,))]
    merged = 4 * dim
    shapes += [("model.visual.merger.ln_q.weight", (dim,)), ("model.visual.merger.ln_q.bias", (dim,)),
               ("model.visual.merger.mlp.0.weight", (merged, merged)), ("model.visual.merger.mlp.0.bias", (merged,)),
               ("model.visual.merger.mlp.2.weight", (hidden, merged)), ("model.visual.merger.mlp.2.bias", (hidden,)),
               ("model.language_model.embed_tokens.weight", (text["vocab_size"], hidden))]
    for j in range(text["num_hidden_layers"]):
        layer = f"model.language_model.layers.{j}."
        shapes += [(layer + "input_layernorm.weight", (hidden,)),
                   (layer + "self_attn.q_proj.weight", (hidden, hidden)), (layer + "self_attn.q_proj.bias", (hidden,)),
                   (layer + "self_attn.k_proj.weight", (kv, hidden)), (layer + "self_attn.k_proj.bias", (kv,)),
                   (layer + "self_attn.v_proj.weight", (kv, hidden)), (layer + "self_attn.v_proj.bias", (kv,)),
                   (layer + "self_attn.o_proj.weight", (hidden, hidden)),
                   (layer + "post_attention_layernorm.weight", (hidden,)),
                   (layer + "mlp.gate_proj.weight", (inter, hidden)), (layer + "mlp.up_proj.weight", (inter, hidden)),
                   (layer + "mlp.down_proj.weight", (hidden, inter))]
    return shapes + [("model.language_model.norm.weight", (hidden,)),
                     ("lm_head.weight", (text["vocab_size"], hidden))]


def write_checkpoint(out_dir, size_gb, shard_mb):
    """Generate the bf16 multi-shard HF checkpoint; returns (total bytes, largest shard bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = bench_config(size_gb)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    shards, current, size = [], [], 0
    for name, shape in hf_shapes(config):
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > shard_mb * 2 ** 20:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    rng, weight_map, sizes = np.random.default_rng(0), {}, []
    for number, shard in enumerate(shards):
        file = f"model-{number + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(out_dir / file, [(n, "BF16", s) for n, s in shard], {"format": "pt"})
        for name, shape in shard:
            # random bf16 bit patterns with exponents kept in a sane range (no inf / nan)
            bits = rng.integers(0x3C00, 0x3F80, size=shape, dtype=np.uint16) | (
                rng.integers(0, 2, size=shape, dtype=np.uint16) << 15)
            writer.write(name, bits.view(ml_dtypes.bfloat16))
            weight_map[name] = file
        writer.close()
        sizes.append(os.path.getsize(out_dir / file))
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, indent=2))
    return sum(sizes), max(sizes), len(shards)


def run(script, *args):
    """Run a child python; returns (seconds, peak RSS bytes) it printed."""
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{args}: exit {done.returncode}\n{done.stderr[-3000:]}")
    out = done.stdout.split()
    return float(out[-2]), int(out[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.2)
    parser.add_argument("--shard-mb", type=int, default=400)
    parser.add_argument("--work-dir", default="/tmp/mmx-bench-convert")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    hf, base, mm, mm2, back = (work / name for name in ("hf", "baseline", "mm", "mm_tp2pp2", "hf_back"))
    start = time.perf_counter()
    total, largest, count = write_checkpoint(hf, args.size_gb, args.shard_mb)
    print(f"checkpoint: {total / 1e9:.2f} GB bf16 in {count} shards, largest shard {largest / 2 ** 20:.0f} MiB "
          f"(generated in {time.perf_counter() - start:.1f}s)")
    layers = bench_config(args.size_gb)["text_config"]["num_hidden_layers"]

    runs = {  # name → (script, output dir, arguments); repeated round-robin so load changes hit all alike
        "baseline safetensors read+write (+fsync)": (BASELINE, base, (hf, base, 1)),
        "baseline without fsync": (BASELINE, base, (hf, base, 0)),
        "hf_to_mm tp1 pp1": (CONVERT, mm, ("hf_to_mm", hf, mm, 1, "4", layers)),
        "hf_to_mm tp2 pp2": (CONVERT, mm2, ("hf_to_mm", hf, mm2, 2, "4,0", f"{layers // 2},{layers // 2}")),
        "mm_to_hf (from tp2 pp2)": (CONVERT, back, ("mm_to_hf", mm2, back, args.shard_mb * 2 ** 20)),
    }
    measured = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, (script, output, arguments) in runs.items():
            shutil.rmtree(output, ignore_errors=True)
            measured[name].append(run(script, *arguments))
    rows = [(name, min(t for t, _ in results), max(r for _, r in results)) for name, results in measured.items()]
    medians = {name: sorted(t for t, _ in results)[len(results) // 2] for name, results in measured.items()}
    base_time, nosync_time = rows[0][1], rows[1][1]
    rows.pop(1)
    print(f"baseline without fsync: {total / nosync_time / 1e9:.2f} GB/s")
    print(f"{'run':42s} {'GB/s':>6s} {'ratio':>6s} {'median ratio':>12s} {'peak RSS MiB':>13s} {'RSS/shard':>9s}")
    ok = True
    for name, seconds, rss in rows:
        ratio, rss_ratio = base_time / seconds, rss / largest
        if not name.startswith("baseline"):
            ok &= ratio >= 0.7 and rss_ratio <= 1.5
        median = medians[rows[0][0]] / medians[name]
        print(f"{name:42s} {total / seconds / 1e9:6.2f} {ratio:6.2f} {median:12.2f} {rss / 2 ** 20:13.0f} "
              f"{rss_ratio:9.2f}")
    print(f"throughput ratio >= 0.7 and peak RSS <= 1.5x largest shard: {'PASS' if ok else 'FAIL'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
