"""Peak host memory of converting and of loading a GLM-4.5V-shaped checkpoint (issue 15's acceptance 4).

Writes a random bf16 GLM-4.5V (``glm4v_moe``) HF checkpoint of a few GB — the hub's layout: per-expert
``experts.{e}.{gate,up,down}_proj.weight``, a float32 ``e_score_correction_bias``, safetensors shards of at most
``--shard-mb`` MB + ``model.safetensors.index.json``, written tensor by tensor — then runs, each in a fresh
subprocess, and prints each one's peak RSS (VmHWM) and time:

* ``hf_to_mm``: stacks each MoE layer's per-expert tensors into (E, in, out) (target: peak ≤ 1.5× the largest
  shard);
* ``mm_to_hf``: splits them back (and the bench checks the result is byte-identical to the source);
* loading the mm checkpoint on torch and on MindSpore with ``models.build_streamed`` (no weight storage at build,
  each parameter filled as its tensor streams), and on torch the whole-load path (``models.build`` with zeros, then
  ``load_mm`` + ``load_mm_state``) for comparison. A loaded model holds float32 parameters, twice the bf16
  checkpoint; the ideal is that plus the framework's import baseline (printed too).

    python bench/convert_memory.py [--layers 12] [--experts 64] [--shard-mb 700] [--work-dir /tmp/mmx-bench-glm]
                                   [--keep] [--skip-mindspore]

The work directory is removed at the end unless ``--keep`` (check ``df -h`` first: about 3x the checkpoint size).
"""
import argparse
import hashlib
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

PEAK = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
CHILDREN = {
    "hf_to_mm": "from mmx.convert.drivers import hf_to_mm\nhf_to_mm(sys.argv[1], sys.argv[2])",
    "mm_to_hf": "from mmx.convert.drivers import mm_to_hf\nmm_to_hf(sys.argv[2], sys.argv[3])",
    "import": "from mmx import models, ops\nops.zeros((1,))",
    "build_streamed": "from mmx import models\nmodel = models.build_streamed(sys.argv[2], sys.argv[2])",
    "whole_load": "from mmx import models\nfrom mmx.checkpoint.store import load_mm\n"
                  "model = models.load_mm_state(models.build(sys.argv[2]), load_mm(sys.argv[2])[1])",
}


def write_config(out_dir, layers, experts):
    """config.json (+ tokenizer / processor files) of the bench model, through the tiny fixture's writer."""
    from mmx.tiny import _write_glm4v_config

    overrides = dict(text_hidden_size=1024, text_num_attention_heads=8, text_head_dim=128, text_num_key_value_heads=2,
                     text_intermediate_size=2048, text_moe_intermediate_size=512, text_n_routed_experts=experts,
                     text_num_experts_per_tok=4, text_num_hidden_layers=layers, mrope_section=[8, 12, 12])
    return _write_glm4v_config(str(out_dir), False, overrides, moe=True)


def hf_tensors(config):
    """[(HF name, dtype string, shape)] of the whole checkpoint, in the hub's order."""
    vision, text = config["vision_config"], config["text_config"]
    width, out, merge = vision["hidden_size"], vision["out_hidden_size"], vision["spatial_merge_size"]
    side, patch = vision["image_size"] // vision["patch_size"], vision["patch_size"]
    v = "model.visual."
    rows = [(v + "patch_embed.proj.weight", (width, 3, 2, patch, patch)), (v + "patch_embed.proj.bias", (width,)),
            (v + "post_conv_layernorm.weight", (width,)), (v + "embeddings.position_embedding.weight",
                                                            (side * side, width))]
    for i in range(vision["depth"]):
        b = f"{v}blocks.{i}."
        rows += [(b + "norm1.weight", (width,)), (b + "norm2.weight", (width,)), (b + "attn.qkv.weight",
                                                                                  (3 * width, width)),
                 (b + "attn.proj.weight", (width, width)), (b + "mlp.gate_proj.weight", (out, width)),
                 (b + "mlp.up_proj.weight", (out, width)), (b + "mlp.down_proj.weight", (width, out))]
    context = vision["intermediate_size"]
    rows += [(v + "post_layernorm.weight", (width,)), (v + "downsample.weight", (out, width, merge, merge)),
             (v + "downsample.bias", (out,)), (v + "merger.proj.weight", (out, out)),
             (v + "merger.post_projection_norm.weight", (out,)), (v + "merger.post_projection_norm.bias", (out,)),
             (v + "merger.gate_proj.weight", (context, out)), (v + "merger.up_proj.weight", (context, out)),
             (v + "merger.down_proj.weight", (out, context))]
    hidden, heads, kv, head_dim = (text[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                     "head_dim"))
    rows.append(("model.language_model.embed_tokens.weight", (text["vocab_size"], hidden)))
    tensors = [(name, "BF16", shape) for name, shape in rows]
    for j in range(text["num_hidden_layers"]):
        p = f"model.language_model.layers.{j}."
        layer = [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,)),
                 (p + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
                 (p + "self_attn.q_proj.bias", (heads * head_dim,)),
                 (p + "self_attn.k_proj.weight", (kv * head_dim, hidden)), (p + "self_attn.k_proj.bias",
                                                                            (kv * head_dim,)),
                 (p + "self_attn.v_proj.weight", (kv * head_dim, hidden)), (p + "self_attn.v_proj.bias",
                                                                            (kv * head_dim,)),
                 (p + "self_attn.o_proj.weight", (hidden, heads * head_dim))]
        mlps = ([("mlp.", text["intermediate_size"])] if j < text["first_k_dense_replace"] else
                [(f"mlp.experts.{e}.", text["moe_intermediate_size"]) for e in range(text["n_routed_experts"])] +
                [("mlp.shared_experts.", text["moe_intermediate_size"] * text["n_shared_experts"])])
        for prefix, inner in mlps:
            layer += [(p + prefix + "gate_proj.weight", (inner, hidden)), (p + prefix + "up_proj.weight",
                                                                           (inner, hidden)),
                      (p + prefix + "down_proj.weight", (hidden, inner))]
        tensors += [(name, "BF16", shape) for name, shape in layer]
        if j >= text["first_k_dense_replace"]:
            tensors += [(p + "mlp.gate.weight", "BF16", (text["n_routed_experts"], hidden)),
                        (p + "mlp.gate.e_score_correction_bias", "F32", (text["n_routed_experts"],))]
    tensors += [("model.language_model.norm.weight", "BF16", (hidden,)),
                ("lm_head.weight", "BF16", (text["vocab_size"], hidden))]
    return tensors


def _nbytes(dtype, shape):
    return int(np.prod(shape)) * (4 if dtype == "F32" else 2)


def write_checkpoint(out_dir, layers, experts, shard_mb):
    """The random checkpoint; returns (total bytes, largest shard bytes, shard count)."""
    config = write_config(out_dir, layers, experts)
    rng = np.random.default_rng(0)
    shards, current, size = [], [], 0
    for entry in hf_tensors(config):
        if current and size + _nbytes(entry[1], entry[2]) > shard_mb * 2 ** 20:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += _nbytes(entry[1], entry[2])
    shards.append(current)
    weight_map, sizes = {}, []
    for n, shard in enumerate(shards):
        file = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(Path(out_dir) / file, shard, {"format": "pt"})
        for name, dtype, shape in shard:
            values = rng.standard_normal(shape, dtype=np.float32) * 0.02
            writer.write(name, values if dtype == "F32" else values.astype(ml_dtypes.bfloat16))
            weight_map[name] = file
        writer.close()
        sizes.append(os.path.getsize(Path(out_dir) / file))
    (Path(out_dir) / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, indent=2))
    return sum(sizes), max(sizes), len(shards)


def run(kind, backend, *args):
    """(seconds, peak RSS bytes) of the child ``kind`` in a fresh process on ``backend``."""
    script = f"import sys, time\n{PEAK}\nstart = time.perf_counter()\n{CHILDREN[kind]}\n" \
             f"print(time.perf_counter() - start, peak())"
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, MMX_BACKEND=backend))
    if done.returncode:
        raise RuntimeError(f"{kind} on {backend}: exit {done.returncode}\n{done.stderr[-3000:]}")
    seconds, peak = done.stdout.split()[-2:]
    return float(seconds), int(peak)


def _digest(directory):
    """{tensor name: sha256 of its bytes} over the safetensors files of an HF directory."""
    from mmx.convert.hf import open_weights
    from mmx.checkpoint.rows import Arena

    arena, out = Arena(), {}
    for name, opened in open_weights(directory).items():
        arena.reset()
        array = opened.read(name, arena)
        out[name] = (str(array.dtype), array.shape, hashlib.sha256(np.ascontiguousarray(array).view(np.uint8)).digest())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--shard-mb", type=int, default=700)
    parser.add_argument("--work-dir", default="/tmp/mmx-bench-glm")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-mindspore", action="store_true")
    args = parser.parse_args()
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    hf_dir, mm_dir, back_dir = work / "hf", work / "mm", work / "hf_back"
    hf_dir.mkdir(parents=True)
    try:
        total, largest, count = write_checkpoint(hf_dir, args.layers, args.experts, args.shard_mb)
        mib = 2 ** 20
        print(f"checkpoint: {total / mib:.0f} MiB bf16 in {count} shards, largest {largest / mib:.0f} MiB "
              f"({args.layers} LLM layers, {args.experts} experts)")
        print(f"{'run':34s} {'seconds':>8s} {'peak RSS MiB':>13s} {'/ largest shard':>16s}")
        results = {}
        for kind, backend, extra in (("hf_to_mm", "torch", ()), ("mm_to_hf", "torch", ()),
                                     ("import", "torch", ()), ("build_streamed", "torch", ()),
                                     ("whole_load", "torch", ()), ("import", "mindspore", ()),
                                     ("build_streamed", "mindspore", ())):
            if backend == "mindspore" and args.skip_mindspore:
                continue
            seconds, peak = run(kind, backend, hf_dir, mm_dir, back_dir, *extra)
            results[kind, backend] = peak
            label = kind if kind in ("hf_to_mm", "mm_to_hf") else f"{kind} ({backend})"
            print(f"{label:34s} {seconds:8.1f} {peak / mib:13.0f} {peak / largest:16.2f}")
        same = _digest(hf_dir) == _digest(back_dir)
        print(f"mm_to_hf(hf_to_mm(x)) byte-identical: {same}")
        model_fp32 = 2 * total
        print(f"float32 model parameters: {model_fp32 / mib:.0f} MiB")
        for backend in ("torch", "mindspore"):
            if ("build_streamed", backend) in results:
                extra = results["build_streamed", backend] - results["import", backend] - model_fp32
                print(f"build_streamed ({backend}): peak - import baseline - fp32 parameters = {extra / mib:.0f} MiB")
        ok = results["hf_to_mm", "torch"] <= 1.5 * largest and same
        print(f"hf_to_mm peak RSS <= 1.5x largest shard and round trip byte-identical: {'PASS' if ok else 'FAIL'}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
