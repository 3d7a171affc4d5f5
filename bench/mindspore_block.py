"""Overhead of mmx's MindSpore backend: one decoder block, forward + backward, written with mmx.nn / mmx.ops versus
the same block written directly in MindSpore (Cells, Parameters, ``mindspore.ops``).

    python bench/mindspore_block.py                 # both variants, the backend's default runtime settings
    python bench/mindspore_block.py --async-launch  # MindSpore's default asynchronous kernel launch instead
    python bench/mindspore_block.py --kernels       # also time the attention and MoE kernels against each other

Both variants compute the same Qwen2-style block (RMSNorm → fused qkv → rotary → causal GQA attention → output
projection → RMSNorm → SwiGLU MLP, two residuals) in float32 from the same weights, take gradients of every
parameter with ``mindspore.value_and_grad``, and must agree to 1e-5 before anything is timed. Prints the median
time per step of each variant and the ratio.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ["MMX_BACKEND"] = "mindspore"

BATCH, SEQ, HIDDEN, HEADS, KV_HEADS, FFN = 2, 128, 256, 4, 2, 704
HEAD_DIM = HIDDEN // HEADS
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM


def weights(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"input_layernorm.weight": (HIDDEN,), "linear_qkv.weight": (QKV, HIDDEN),
              "linear_qkv.bias": (QKV,), "linear_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
              "pre_mlp_layernorm.weight": (HIDDEN,), "linear_fc1.weight": (2 * FFN, HIDDEN),
              "linear_fc2.weight": (HIDDEN, FFN)}
    return {name: (rng.standard_normal(shape) * (0.02 if len(shape) == 2 else 1.0)).astype(np.float32)
            for name, shape in shapes.items()}


def mmx_block():
    from mmx import nn, ops

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = nn.RMSNorm(HIDDEN)
            self.linear_qkv = nn.Linear(HIDDEN, QKV)
            self.linear_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
            self.pre_mlp_layernorm = nn.RMSNorm(HIDDEN)
            self.linear_fc1 = nn.Linear(HIDDEN, 2 * FFN, bias=False)
            self.linear_fc2 = nn.Linear(FFN, HIDDEN, bias=False)

        def forward(self, x, cos, sin):
            batch, seq, _ = x.shape
            q, k, v = ops.split(self.linear_qkv(self.input_layernorm(x)),
                                [HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = ops.apply_rotary(ops.reshape(q, (batch, seq, HEADS, HEAD_DIM)), cos, sin)
            k = ops.apply_rotary(ops.reshape(k, (batch, seq, KV_HEADS, HEAD_DIM)), cos, sin)
            v = ops.reshape(v, (batch, seq, KV_HEADS, HEAD_DIM))
            attended = ops.attention(q, k, v, causal=True)
            x = x + self.linear_proj(ops.reshape(attended, (batch, seq, HEADS * HEAD_DIM)))
            gate, up = ops.split(self.linear_fc1(self.pre_mlp_layernorm(x)), [FFN, FFN], dim=-1)
            return x + self.linear_fc2(ops.silu(gate) * up)

    block = Block()
    nn.load_state_dict(block, weights())
    params = [param for _, param in nn.named_parameters(block)]
    return block, params


def plain_block():
    import mindspore
    from mindspore import Parameter, Tensor
    from mindspore import ops as P

    class Block(mindspore.nn.Cell):
        def __init__(self):
            super().__init__()
            w = weights()
            self.norm1 = Parameter(Tensor(w["input_layernorm.weight"]), name="norm1")
            self.qkv_w = Parameter(Tensor(w["linear_qkv.weight"]), name="qkv_w")
            self.qkv_b = Parameter(Tensor(w["linear_qkv.bias"]), name="qkv_b")
            self.proj_w = Parameter(Tensor(w["linear_proj.weight"]), name="proj_w")
            self.norm2 = Parameter(Tensor(w["pre_mlp_layernorm.weight"]), name="norm2")
            self.fc1_w = Parameter(Tensor(w["linear_fc1.weight"]), name="fc1_w")
            self.fc2_w = Parameter(Tensor(w["linear_fc2.weight"]), name="fc2_w")
            self.matmul_nt = P.MatMul(transpose_b=True)
            self.bmm_nt = P.BatchMatMul(transpose_b=True)
            causal = np.triu(np.full((SEQ, SEQ), np.finfo(np.float32).min, np.float32), 1)
            self.causal = Tensor(causal[None, None])

        def rms(self, x, weight):
            return x * P.rsqrt(P.mean(x * x, -1, True) + 1e-6) * weight

        def rotate(self, x, cos, sin):
            half = HEAD_DIM // 2
            return x * cos + P.cat((-x[..., half:], x[..., :half]), -1) * sin

        def construct(self, x, cos, sin):
            rows = BATCH * SEQ
            qkv = self.matmul_nt(P.reshape(self.rms(x, self.norm1), (rows, HIDDEN)), self.qkv_w) + self.qkv_b
            q = P.reshape(qkv[:, :HEADS * HEAD_DIM], (BATCH, SEQ, HEADS, HEAD_DIM))
            k = P.reshape(qkv[:, HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
            v = P.reshape(qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
            cos4, sin4 = P.expand_dims(cos, 2), P.expand_dims(sin, 2)
            group = HEADS // KV_HEADS
            q = P.reshape(P.swapaxes(self.rotate(q, cos4, sin4), 1, 2), (BATCH, KV_HEADS, group * SEQ, HEAD_DIM))
            k = P.swapaxes(self.rotate(k, cos4, sin4), 1, 2)
            v = P.swapaxes(v, 1, 2)
            scores = P.reshape(self.bmm_nt(q, k), (BATCH, HEADS, SEQ, SEQ)) * (HEAD_DIM ** -0.5) + self.causal
            probs = P.reshape(P.softmax(scores, -1), (BATCH, KV_HEADS, group * SEQ, SEQ))
            attended = P.swapaxes(P.reshape(P.matmul(probs, v), (BATCH, HEADS, SEQ, HEAD_DIM)), 1, 2)
            x = x + P.reshape(self.matmul_nt(P.reshape(attended, (rows, HIDDEN)), self.proj_w), (BATCH, SEQ, HIDDEN))
            hidden = self.matmul_nt(P.reshape(self.rms(x, self.norm2), (rows, HIDDEN)), self.fc1_w)
            mlp = self.matmul_nt(P.silu(hidden[:, :FFN]) * hidden[:, FFN:], self.fc2_w)
            return x + P.reshape(mlp, (BATCH, SEQ, HIDDEN))

    block = Block()
    return block, list(block.trainable_params())


def inputs():
    import mindspore
    rng = np.random.default_rng(1)
    x = mindspore.Tensor(rng.standard_normal((BATCH, SEQ, HIDDEN)).astype(np.float32))
    inv_freq = 1.0 / (10000 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM))
    angles = np.arange(SEQ)[:, None] * inv_freq[None]
    angles = np.broadcast_to(np.concatenate([angles, angles], -1), (BATCH, SEQ, HEAD_DIM)).astype(np.float32)
    return x, mindspore.Tensor(np.cos(angles)), mindspore.Tensor(np.sin(angles))


def step_fn(block, params):
    import mindspore

    def loss(x, cos, sin):
        return (block(x, cos, sin) ** 2).mean()
    return mindspore.value_and_grad(loss, None, params)


def run(variants, steps, warmup):
    x, cos, sin = inputs()
    built = {name: build() for name, build in variants.items()}
    steps_fns = {name: step_fn(*built[name]) for name in variants}
    results = {name: steps_fns[name](x, cos, sin) for name in variants}
    (loss_a, grads_a), (loss_b, grads_b) = results.values()
    worst = max(float(np.abs(a.asnumpy() - b.asnumpy()).max()) for a, b in zip(grads_a, grads_b))
    assert abs(float(loss_a.asnumpy()) - float(loss_b.asnumpy())) < 1e-5 and worst < 1e-5, (loss_a, loss_b, worst)
    times = {name: [] for name in variants}
    for index in range(warmup + steps):
        for name, fn in steps_fns.items():  # interleaved, so machine load hits both alike
            start = time.perf_counter()
            loss, grads = fn(x, cos, sin)
            grads[-1].asnumpy()  # waits for the step (runtime.synchronize() is not supported on CPU)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}, worst


def time_kernels(steps):
    """Median fwd+bwd ms of each attention kernel (dense causal GQA, varlen) and MoE kernel on this device."""
    from mmx import backend, ops
    kernels = backend.get().kernels
    rng = np.random.default_rng(0)

    def tensor(*shape):
        return ops.tensor(rng.standard_normal(shape).astype(np.float32))

    def median_ms(fn, inputs):
        grad = backend.get().autograd.value_and_grad
        times = []
        for index in range(steps + 2):
            start = time.perf_counter()
            value, _ = grad(lambda *xs: ops.sum(fn(*xs)), inputs)
            ops.to_numpy(value)
            if index >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    cu_seqlens = ops.tensor(np.array([0, 100, 180, 256], np.int32))
    dense = [tensor(2, 256, 8, 64), tensor(2, 256, 4, 64), tensor(2, 256, 4, 64)]
    cases = {"dense causal B=2 S=256 H=8/4 D=64": (dense, dict(causal=True)),
             "varlen causal T=256 (3 seqs) H=8/4 D=64": ([tensor(256, 8, 64), tensor(256, 4, 64), tensor(256, 4, 64)],
                                                         dict(causal=True, cu_seqlens=cu_seqlens))}
    for label, (inputs, options) in cases.items():
        row = {impl: median_ms(lambda q, k, v, impl=impl: ops.attention(q, k, v, impl=impl, **options), inputs)
               for impl in kernels.available_attention_kernels()}
        print(f"  attention {label}: " + ", ".join(f"{impl} {ms_:.1f} ms" for impl, ms_ in row.items()))
    weights, indices = ops.router_topk(tensor(256, 8), 2)
    inputs = [tensor(256, 128), tensor(8, 128, 512) * 0.05, tensor(8, 256, 128) * 0.05]
    row = {impl: median_ms(lambda x, gate_up, down, impl=impl: ops.moe_experts(x, weights, indices, gate_up, down,
                                                                               impl=impl), inputs)
           for impl in kernels.available_moe_kernels()}
    print("  moe T=256 C=128 E=8 K=2 F=256: " + ", ".join(f"{impl} {ms_:.1f} ms" for impl, ms_ in row.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--kernels", action="store_true", help="also time attention and MoE kernels (fwd+bwd)")
    parser.add_argument("--async-launch", action="store_true",
                        help="keep MindSpore's asynchronous kernel launch (the backend turns it off on CPU)")
    args = parser.parse_args(argv)
    if args.async_launch:
        os.environ["MMX_MINDSPORE_ASYNC"] = "1"
    from mmx import backend
    backend.get()
    medians, worst = run({"mmx": mmx_block, "mindspore": plain_block}, args.steps, args.warmup)
    print(f"block B={BATCH} S={SEQ} hidden={HIDDEN} heads={HEADS}/{KV_HEADS} ffn={FFN} fp32 fwd+bwd, "
          f"{'async' if args.async_launch else 'default'} launch; grads agree to {worst:.1e}")
    for name, ms_per_step in medians.items():
        print(f"  {name:10s} {ms_per_step:8.2f} ms/step (median of {args.steps})")
    print(f"  mmx / hand-written = {medians['mmx'] / medians['mindspore']:.3f}")
    if args.kernels:
        time_kernels(args.steps)


if __name__ == "__main__":
    sys.exit(main())
