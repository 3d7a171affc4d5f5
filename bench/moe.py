"""One MoE layer, forward + backward, side by side: mmx's grouped GEMM vs its loop reference vs transformers' own
experts, on torch and on MindSpore.

    python bench/moe.py [--tokens 1024] [--hidden 512] [--experts 32] [--top-k 4] [--intermediate 192]
                        [--steps 2] [--seconds 1] [--rounds 3] [--dtype auto|bf16|fp32]
                        [--skip-mindspore]

The layer is Qwen3-VL-MoE's sparse MoE block (router Linear C → E, softmax in float32, top-k, weights renormalised,
SwiGLU experts, weighted combine) at Qwen3-VL-30B-A3B's expert shapes scaled to a 2-core CPU: the real layer has
hidden 2048, 128 experts, top-8, moe_intermediate 768; the default here is hidden 512, 32 experts, top-4,
moe_intermediate 192 (hidden and intermediate / 4, a quarter of the experts, half the top-k) on 1024 tokens. The
router and the experts are random, so the tokens spread over all experts. Every worker gets the same weights and
input, takes the gradient of ``sum(y * probe)`` (a fixed random probe) with respect to the input, the router and both
expert tensors, and runs in a process of its backend (one backend per process, chosen by MMX_BACKEND):

    mmx-torch-grouped-<dtype>          ops.router_topk + ops.moe_experts(impl="grouped"): torch.nn.functional.grouped_mm
    mmx-torch-loop-<dtype>             the same with impl="loop" (one matmul per expert over its rows)
    transformers-grouped_mm-<dtype>    transformers 5.23's Qwen3VLMoeTextSparseMoeBlock, experts_implementation
                                       "grouped_mm" (what from_pretrained picks by default)
    transformers-eager-<dtype>         the same block with the "eager" expert loop of modeling_qwen3_vl_moe.py
    mmx-torch-grouped-fp32             (only when <dtype> is bf16, for the MindSpore ratio)
    mmx-mindspore-grouped-fp32         MindSpore: one matmul per non-empty expert over its rows (``gmm`` on Ascend)
    mmx-mindspore-loop-fp32            MindSpore's reference: every expert runs densely on every token

The mmx workers call the ops of models/common/moe.py's SparseMoeBlock.forward (router Linear → ops.router_topk →
ops.moe_experts) with the kernel named; transformers keeps gate_up_proj as (E, 2F, C) and down_proj as (E, C, F), the
transposes of mmx's (E, C, 2F) / (E, F, C), and gets the same numbers in its layout. Before anything is timed, the
first step's output and gradients of every worker are compared with a reference of the same dtype (transformers
eager, or mmx-torch-grouped-fp32 for the fp32 workers of a bf16 run) and the bench stops if they disagree.

One persistent process per backend keeps its workers built; the workers are timed in turn, ``--rounds`` times
(interleaved, so a burst of other load hits all of them), each time ``--steps`` steps or more until ``--seconds``
have passed, and the best step counts (other load on a shared machine only ever slows a step down). The
last lines are tokens/s per worker and the ratios ``grouped_vs_loop``, ``grouped_vs_transformers`` (vs transformers'
default grouped_mm), ``grouped_vs_transformers_eager``, ``mindspore_grouped_vs_loop`` and ``mindspore_vs_torch``
(MindSpore grouped vs torch grouped, both fp32). ``--dtype auto`` compares in bf16 where this machine's bf16 matmul
beats fp32 (GPUs, CPUs with AMX), else in fp32.
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

from train import matmul_peak_torch  # bench/train.py

RESULT_PREFIX = "MMX_BENCH_MOE "
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}   # max abs diff of the output, max relative diff of each gradient


def choose_dtype(requested):
    """``requested``, or for "auto" bf16 when this machine's bf16 matmul beats fp32, else fp32. The probe is 1024²,
    best of 5: at 256² both dtypes read ~4 GFLOP/s on a loaded 2-core machine (call overhead), a coin flip."""
    if requested != "auto":
        return requested
    bf16, fp32 = matmul_peak_torch("bfloat16", 1024, 5), matmul_peak_torch("float32", 1024, 5)
    chosen = "bf16" if bf16 > fp32 else "fp32"
    print(f"--dtype auto: bf16 matmul {bf16 / 1e9:.1f} GFLOP/s, fp32 {fp32 / 1e9:.1f} GFLOP/s -> {chosen}")
    return chosen


def worker_names(dtype, skip_mindspore):
    names = [f"mmx-torch-grouped-{dtype}", f"mmx-torch-loop-{dtype}", f"transformers-grouped_mm-{dtype}",
             f"transformers-eager-{dtype}"]
    if dtype != "fp32":
        names.append("mmx-torch-grouped-fp32")
    if not skip_mindspore:
        names += ["mmx-mindspore-grouped-fp32", "mmx-mindspore-loop-fp32"]
    return names


def reference_of(name, names):
    """The worker whose numbers ``name`` is checked against: transformers eager in that dtype, else the first."""
    dtype = name.rsplit("-", 1)[1]
    same = [other for other in names if other.endswith(f"-{dtype}")]
    eager = f"transformers-eager-{dtype}"
    return eager if eager in same else same[0]


def make_inputs(tokens, hidden, experts, intermediate, seed=0):
    """Weights and input in mmx's layout, float32: router (E, C), gate_up (E, C, 2F), down (E, F, C), x (T, C) and the
    probe (T, C) the loss weights the output with. The scales keep y and its gradients of order 1."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((tokens, hidden)),
              "router": rng.standard_normal((experts, hidden)) * (2 / np.sqrt(hidden)),   # logits ~ N(0, 4): spread
              "gate_up": rng.standard_normal((experts, hidden, 2 * intermediate)) / np.sqrt(hidden),
              "down": rng.standard_normal((experts, intermediate, hidden)) / np.sqrt(intermediate),
              "probe": rng.standard_normal((tokens, hidden)) / np.sqrt(tokens)}
    return {name: array.astype(np.float32) for name, array in arrays.items()}


GRADS = ("x", "router", "gate_up", "down")


def mmx_worker(inputs, impl, dtype, top_k):
    """A step function of the mmx layer with kernel ``impl``: → (y (T, C), {name: gradient}) as numpy float32."""
    from mmx import backend, ops

    compute = ops.bfloat16 if dtype == "bf16" else ops.float32
    tensors = [ops.cast(ops.tensor(inputs[name]), compute) for name in GRADS]
    probe = ops.cast(ops.tensor(inputs["probe"]), compute)
    value_and_grad = backend.get().autograd.value_and_grad
    outputs = {}

    def layer(x, router, gate_up, down):
        logits = ops.linear(x, router)                        # SparseMoeBlock.router
        weights, indices = ops.router_topk(logits, top_k, normalize=True)
        y = ops.moe_experts(x, ops.cast(weights, x.dtype), indices, gate_up, down, impl=impl)
        outputs["y"] = y
        return ops.sum(ops.cast(y * probe, ops.float32))

    def step():
        _, grads = value_and_grad(layer, tensors)
        return _numpy(ops, outputs["y"]), {name: _numpy(ops, g) for name, g in zip(GRADS, grads)}
    return step


def _numpy(ops, tensor):
    return ops.to_numpy(ops.cast(tensor, ops.float32))


def transformers_worker(inputs, implementation, dtype, top_k):
    """The same step on transformers' Qwen3VLMoeTextSparseMoeBlock, the experts in its (E, 2F, C) / (E, C, F)
    layout; gradients are returned in mmx's layout."""
    import torch
    from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextSparseMoeBlock

    experts, hidden = inputs["router"].shape
    config = Qwen3VLMoeTextConfig(hidden_size=hidden, num_experts=experts, num_experts_per_tok=top_k,
                                  moe_intermediate_size=inputs["down"].shape[1], hidden_act="silu")
    config._experts_implementation = implementation  # a standalone block has None (which warns and runs eager)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    block = Qwen3VLMoeTextSparseMoeBlock(config).to(torch_dtype)
    with torch.no_grad():
        block.gate.weight.copy_(torch.from_numpy(inputs["router"]))
        block.experts.gate_up_proj.copy_(torch.from_numpy(inputs["gate_up"].transpose(0, 2, 1)))
        block.experts.down_proj.copy_(torch.from_numpy(inputs["down"].transpose(0, 2, 1)))
    x = torch.from_numpy(inputs["x"]).to(torch_dtype)[None]            # (1, T, C)
    probe = torch.from_numpy(inputs["probe"]).to(torch_dtype)[None]

    def step():
        leaf = x.detach().requires_grad_(True)
        for param in block.parameters():
            param.grad = None
        y = block(leaf)
        (y * probe).float().sum().backward()
        grads = {"x": leaf.grad[0], "router": block.gate.weight.grad,
                 "gate_up": block.experts.gate_up_proj.grad.transpose(1, 2),
                 "down": block.experts.down_proj.grad.transpose(1, 2)}
        return y[0].detach().float().numpy(), {name: g.float().numpy() for name, g in grads.items()}
    return step


def build_worker(name, inputs, top_k):
    dtype = name.rsplit("-", 1)[1]
    if name.startswith("transformers-"):
        return transformers_worker(inputs, name.split("-")[1], dtype, top_k)
    return mmx_worker(inputs, name.split("-")[2], dtype, top_k)


def serve(work, top_k):
    """A worker process: reads {"worker", "action", "steps"} lines on stdin, answers one result line each.
    ``check`` runs the first step and saves its numbers to ``work``; ``time`` returns the best of ``steps`` steps."""
    inputs = dict(np.load(os.path.join(work, "inputs.npz")))
    steps = {}
    for line in sys.stdin:
        request = json.loads(line)
        name = request["worker"]
        try:
            if name not in steps:
                steps[name] = build_worker(name, inputs, top_k)
            if request["action"] == "check":
                y, grads = steps[name]()
                np.savez(os.path.join(work, f"{name}.npz"), y=y, **grads)
                answer = {"worker": name}
            else:
                answer = {"worker": name, "step_s": _best_step(steps[name], request["steps"], request["seconds"])}
        except Exception as error:  # reported to the driver, which shows it and goes on without this worker
            answer = {"worker": name, "error": f"{type(error).__name__}: {error}"}
        print(RESULT_PREFIX + json.dumps(answer), flush=True)


def _best_step(step, count, seconds):
    """The fastest of at least ``count`` runs of ``step``, more until ``seconds`` have passed: a fast worker gets more
    tries at a moment the shared machine is quiet, a slow one still runs ``count`` times."""
    times, started = [], time.perf_counter()
    while len(times) < count or time.perf_counter() - started < seconds:
        times.append(_timed(step))
    return min(times)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Server:
    """The persistent worker process of one backend."""

    def __init__(self, backend, work, top_k):
        self.log = open(os.path.join(work, f"{backend}.log"), "w+")
        command = [sys.executable, os.path.abspath(__file__), "--serve", "--dir", work, "--top-k", str(top_k)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=dict(os.environ, MMX_BACKEND=backend, TOKENIZERS_PARALLELISM="false"))

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        self.log.seek(0)
        raise RuntimeError(f"the {request['worker']} process ended:\n{self.log.read()[-3000:]}")

    def close(self):
        self.process.stdin.close()
        self.process.wait()
        self.log.close()


def check(names, work):
    """{name: (output max abs diff, worst gradient max relative diff)} against each worker's reference."""
    loaded = {name: dict(np.load(os.path.join(work, f"{name}.npz"))) for name in names}
    diffs = {}
    for name in names:
        ours, theirs = loaded[name], loaded[reference_of(name, names)]
        output = float(np.abs(ours["y"] - theirs["y"]).max())
        grad = max(float(np.abs(ours[key] - theirs[key]).max() / np.abs(theirs[key]).max()) for key in GRADS)
        diffs[name] = (output, grad)
    return diffs


def compare(args, dtype, work):
    inputs = make_inputs(args.tokens, args.hidden, args.experts, args.intermediate)
    np.savez(os.path.join(work, "inputs.npz"), **inputs)
    names = worker_names(dtype, args.skip_mindspore)
    flops = 6 * args.tokens * args.top_k * 3 * args.hidden * args.intermediate  # expert GEMMs, fwd + bwd
    print(f"MoE layer: tokens {args.tokens}, hidden {args.hidden}, experts {args.experts}, top-{args.top_k}, "
          f"moe_intermediate {args.intermediate}; gate_up ({args.experts}, {args.hidden}, {2 * args.intermediate}), "
          f"down ({args.experts}, {args.intermediate}, {args.hidden}); {flops / 1e9:.1f} GFLOP of expert GEMMs per "
          f"fwd+bwd step; dtype {dtype}")
    servers = {backend: Server(backend, work, args.top_k) for backend in ("torch", "mindspore")
               if any((backend == "mindspore") == ("mindspore" in name) for name in names)}

    def server_of(name):
        return servers["mindspore" if "mindspore" in name else "torch"]

    try:
        for name in list(names):
            answer = server_of(name).ask(worker=name, action="check")
            if "error" in answer:
                print(f"{name} failed: {answer['error']}", file=sys.stderr)
                names.remove(name)
        diffs = check(names, work)
        for name, (output, grad) in diffs.items():
            print(f"{name:32s} vs {reference_of(name, names):28s} output max abs diff {output:.2e}, "
                  f"gradients max rel diff {grad:.2e}")
        wrong = [name for name, (output, grad) in diffs.items()
                 if max(output, grad) > TOLERANCE[name.rsplit("-", 1)[1]]]
        if wrong:
            raise SystemExit(f"{', '.join(wrong)} disagree with their reference beyond {TOLERANCE}; not timing")
        best = {}
        for _ in range(args.rounds):  # interleaved rounds: a burst of other load on the machine hits every worker
            for name in names:
                answer = server_of(name).ask(worker=name, action="time", steps=args.steps, seconds=args.seconds)
                best[name] = min(best.get(name, float("inf")), answer["step_s"])
    finally:
        for server in servers.values():
            server.close()
    tokens_per_s = {name: args.tokens / seconds for name, seconds in best.items()}
    for name, rate in tokens_per_s.items():
        print(f"{name:32s} step {1e3 * best[name]:8.1f} ms  tokens/s {rate:9.0f}  "
              f"{flops / best[name] / 1e9:6.1f} GFLOP/s")
    ratios = {"grouped_vs_loop": (f"mmx-torch-grouped-{dtype}", f"mmx-torch-loop-{dtype}"),
              "grouped_vs_transformers": (f"mmx-torch-grouped-{dtype}", f"transformers-grouped_mm-{dtype}"),
              "grouped_vs_transformers_eager": (f"mmx-torch-grouped-{dtype}", f"transformers-eager-{dtype}"),
              "mindspore_grouped_vs_loop": ("mmx-mindspore-grouped-fp32", "mmx-mindspore-loop-fp32"),
              "mindspore_vs_torch": ("mmx-mindspore-grouped-fp32", "mmx-torch-grouped-fp32")}
    for label, (ours, theirs) in ratios.items():
        if {ours, theirs} <= set(tokens_per_s):
            print(f"{label}={tokens_per_s[ours] / tokens_per_s[theirs]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512, help="Qwen3-VL-30B-A3B: 2048")
    parser.add_argument("--experts", type=int, default=32, help="Qwen3-VL-30B-A3B: 128")
    parser.add_argument("--top-k", type=int, default=4, help="Qwen3-VL-30B-A3B: 8")
    parser.add_argument("--intermediate", type=int, default=192, help="moe_intermediate_size; Qwen3-VL-30B-A3B: 768")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per worker and round, at least (best counts)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="per worker and round, more steps until this long has passed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every worker, interleaved (best counts)")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="dtype of the torch workers (MindSpore computes in fp32 on CPU)")
    parser.add_argument("--skip-mindspore", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.dir, args.top_k)
    dtype = choose_dtype(args.dtype)
    work = tempfile.mkdtemp(prefix="mmx_bench_moe_")
    started = time.perf_counter()
    try:
        compare(args, dtype, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()
    print(f"(measured in {time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
