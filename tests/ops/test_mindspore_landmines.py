"""MindSpore 2.10 CPU landmines (ARCHITECTURE.md) and the backend paths that avoid them: each test fails if the
backend falls into its landmine.

- in-place Tensor methods silently do nothing in PyNative → parameter updates go through ``ops.assign``;
  ``asnumpy()`` / ``set_data`` alias memory → ``ops.to_numpy`` / ``ops.tensor`` / loads copy;
- ``mint.split`` outputs feeding ``cat`` get wrong gradients → ``ops.split`` slices;
- many ``mint`` kernels are Ascend-only → the backend's CPU ops run (and are right) on CPU;
- bf16 compute (and bf16 gradients of slicing/broadcast/stack) is unsupported on CPU → contract ops given bf16
  compute in float32 and round the result to bf16, forward and backward;
- parameter names come from MindSpore's auto-prefix → state-dict keys equal torch's, checked in a torch subprocess.
"""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import ops_reference as ref
from mmx import backend, nn, ops
from ops_harness import check_op, random

pytestmark = pytest.mark.backend("mindspore")


# ----------------------------------------------------------------------------------------------------------------
# in-place no-op: our parameter update path (load_state_dict → ops.assign) really changes the values a forward uses
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_load_state_dict_changes_parameters_and_forward(dtype):
    layer = nn.Linear(3, 2, dtype=getattr(ops, dtype))
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) / 4.0
    bias = np.array([0.5, -1.0], np.float32)
    missing, unexpected = nn.load_state_dict(layer, {"weight": weight, "bias": ops.tensor(bias)})
    assert (missing, unexpected) == ([], [])
    stored = nn.state_dict(layer)
    np.testing.assert_array_equal(np.asarray(ops.to_numpy(stored["weight"]), np.float32), weight)
    assert stored["weight"].dtype == getattr(ops, dtype)  # cast to the parameter's dtype on load
    x = np.ones((1, 3), np.float32)
    out = layer(ops.cast(ops.tensor(x), getattr(ops, dtype)))
    np.testing.assert_array_equal(np.asarray(ops.to_numpy(out), np.float32), x @ weight.T + bias)


def test_load_state_dict_errors_name_the_keys():
    layer = nn.Linear(3, 2)
    with pytest.raises(KeyError, match=r"missing \['bias'\].*unexpected \['weights'\]"):
        nn.load_state_dict(layer, {"weight": np.zeros((2, 3)), "weights": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"weight: checkpoint \(3, 2\) vs model \(2, 3\)"):
        nn.load_state_dict(layer, {"weight": np.zeros((3, 2)), "bias": np.zeros(2)})
    assert nn.load_state_dict(layer, {"bias": np.ones(2)}, strict=False) == (["weight"], [])
    np.testing.assert_array_equal(ops.to_numpy(layer.bias), [1.0, 1.0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tensor_and_to_numpy_copy(dtype):
    # Tensor.asnumpy() shares the tensor's memory, and Parameter.set_data aliases its argument: mmx copies both ways.
    layer = nn.Linear(2, 2, dtype=getattr(ops, dtype))
    snapshot = ops.tensor(layer.weight)
    host = ops.to_numpy(layer.weight)
    host[...] = 5.0
    nn.load_state_dict(layer, {"weight": np.ones((2, 2)), "bias": np.ones(2)})
    np.testing.assert_array_equal(np.asarray(ops.to_numpy(snapshot), np.float32), np.zeros((2, 2)))
    np.testing.assert_array_equal(np.asarray(ops.to_numpy(layer.weight), np.float32), np.ones((2, 2)))


# ----------------------------------------------------------------------------------------------------------------
# split → cat gradients are exact (mint.split gets them wrong on CPU)
# ----------------------------------------------------------------------------------------------------------------

def test_split_then_cat_gradient_is_exact():
    x = random((2, 6), 0)
    weight = np.arange(1.0, 7.0).reshape(1, 6)

    def loss(x):
        first, middle, last = ops.split(x, [2, 3, 1], dim=1)
        reordered = ops.cat([last, first, middle], dim=1)
        return ops.sum(reordered * ops.tensor(weight.astype(np.float32)))

    _, (grad,) = backend.get().autograd.value_and_grad(loss, [ops.tensor(x.astype(np.float32))])
    # d loss / d x[:, j] is the weight at the column x[:, j] moved to: [1, 2 | 3, 4, 5 | 0] shifted by the reorder
    want = np.broadcast_to(np.array([2.0, 3.0, 4.0, 5.0, 6.0, 1.0]), (2, 6))
    np.testing.assert_array_equal(ops.to_numpy(grad), want)


def test_split_cat_through_a_fused_projection_matches_numpy():
    # The fused-qkv pattern of the models: one matmul, split in three, recombined — forward and backward.
    sizes = [4, 2, 2]

    def fused(x, w):
        q, k, v = ops.split(ops.linear(x, w), sizes, dim=-1)
        return ops.cat([v * 2.0, q, k * k], dim=-1)

    def reference(x, w):
        y = x @ w.T
        return np.concatenate([y[:, 6:] * 2.0, y[:, :4], y[:, 4:6] ** 2], axis=-1)

    check_op(fused, reference, [random((3, 5), 1), random((8, 5), 2)], "float32")


# ----------------------------------------------------------------------------------------------------------------
# mint kernels that are Ascend-only on CPU: our versions of exactly those ops run on CPU, forward and backward
# ----------------------------------------------------------------------------------------------------------------

_INDEX = np.array([2, 0, 3])
_ASCEND_ONLY_IN_MINT = [
    ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b, 1e-5), lambda x, w, b: ref.layer_norm(x, w, b, 1e-5),
     [(3, 8), (8,), (8,)]),
    ("gelu", ops.gelu, ref.gelu, [(3, 8)]),
    ("rms_norm", lambda x, w: ops.rms_norm(x, w, 1e-6), lambda x, w: ref.rms_norm(x, w, 1e-6), [(3, 8), (8,)]),
    ("stack", lambda a, b: ops.stack([a, b], 1), lambda a, b: np.stack([a, b], 1), [(3, 4), (3, 4)]),
    ("topk", lambda x: ops.topk(x, 2, dim=-1)[0], lambda x: -np.sort(-x, -1)[:, :2], [(3, 5)]),
    ("cumsum", lambda x: ops.cumsum(x, 1), lambda x: np.cumsum(x, 1), [(3, 5)]),
    ("index_select", lambda x: ops.index_select(x, 0, ops.tensor(_INDEX)), lambda x: x[_INDEX], [(4, 3)]),
    ("repeat_interleave", lambda x: ops.repeat_interleave(x, 3, 0), lambda x: np.repeat(x, 3, 0), [(2, 3)]),
    ("outer_via_matmul", lambda a, b: ops.matmul(ops.unsqueeze(a, 1), ops.unsqueeze(b, 0)), np.outer, [(3,), (4,)]),
    ("tril", lambda x: ops.tril(x, 0), lambda x: np.tril(x, 0), [(4, 4)]),
    ("embedding", lambda w: ops.embedding(ops.tensor(_INDEX), w), lambda w: w[_INDEX], [(5, 3)]),
    ("cross_entropy", lambda x: ops.cross_entropy(x, ops.tensor(_INDEX)),
     lambda x: ref.cross_entropy(x, _INDEX), [(3, 5)]),
    ("patch_embed_conv3d_as_matmul", lambda x, w: ops.linear(x, ops.reshape(w, (4, 24))),
     lambda x, w: x @ w.reshape(4, 24).T, [(5, 24), (4, 3, 2, 2, 2)]),
]


@pytest.mark.parametrize("name,backend_fn,reference_fn,shapes", _ASCEND_ONLY_IN_MINT,
                         ids=[case[0] for case in _ASCEND_ONLY_IN_MINT])
def test_ops_whose_mint_kernel_is_ascend_only_run_on_cpu(name, backend_fn, reference_fn, shapes):
    assert backend.get().device() == "cpu"
    arrays = [random(shape, seed) for seed, shape in enumerate(shapes)]
    check_op(backend_fn, reference_fn, arrays, "float32", out_dtype="float32")


def test_arange_runs_on_cpu():
    np.testing.assert_array_equal(ops.to_numpy(ops.arange(1, 10, 3)), [1, 4, 7])
    assert ops.arange(4).dtype == ops.int64 and ops.arange(4, dtype=ops.float32).dtype == ops.float32


# ----------------------------------------------------------------------------------------------------------------
# bf16 on CPU: contract ops compute in float32 and round the result to bf16 once (MindSpore CPU has no bf16 kernels)
# ----------------------------------------------------------------------------------------------------------------

_BF16_OPS = [
    ("linear", lambda x, w: ops.linear(x, w), [(3, 8), (5, 8)]),
    ("matmul", ops.matmul, [(2, 3, 8), (2, 8, 4)]),
    ("softmax", lambda x: ops.softmax(x, -1), [(3, 8)]),
    ("silu", ops.silu, [(3, 8)]),
    ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b, 1e-5), [(3, 8), (8,), (8,)]),
    ("gelu", ops.gelu, [(3, 8)]),
    ("attention", lambda q, k, v: ops.attention(q, k, v, causal=True), [(1, 4, 2, 8), (1, 4, 1, 8), (1, 4, 1, 8)]),
    ("moe_grouped_matmul", lambda x, w: ops.grouped_matmul(x, w, ops.tensor(np.array([1, 0, 3]))),
     [(4, 8), (3, 8, 2)]),
]


@pytest.mark.parametrize("name,backend_fn,shapes", _BF16_OPS, ids=[case[0] for case in _BF16_OPS])
def test_bf16_computes_in_float32_and_rounds_once(name, backend_fn, shapes):
    arrays = [random(shape, seed).astype(ml_dtypes.bfloat16) for seed, shape in enumerate(shapes)]
    got = backend_fn(*[ops.tensor(a) for a in arrays])
    assert got.dtype == ops.bfloat16
    # The same op on the bf16 values held in float32, rounded to bf16: bit-identical.
    want = ops.cast(backend_fn(*[ops.tensor(a.astype(np.float32)) for a in arrays]), ops.bfloat16)
    np.testing.assert_array_equal(ops.to_numpy(got).view(np.uint16), ops.to_numpy(want).view(np.uint16))


def test_bf16_rms_norm_rounds_like_hf():
    # Qwen2RMSNorm: the normalised x is cast to bf16 before the weight multiply, whose product is rounded again.
    x, weight = (random(shape, seed).astype(ml_dtypes.bfloat16) for seed, shape in enumerate([(3, 8), (8,)]))
    got = ops.rms_norm(ops.tensor(x), ops.tensor(weight), 1e-6)
    normed = ops.cast(ops.rms_norm(ops.tensor(x.astype(np.float32)), ops.ones((8,)), 1e-6), ops.bfloat16)
    want = ops.cast(ops.cast(normed, ops.float32) * ops.tensor(weight.astype(np.float32)), ops.bfloat16)
    np.testing.assert_array_equal(ops.to_numpy(got).view(np.uint16), ops.to_numpy(want).view(np.uint16))


_BF16_GRADIENT_CASES = [
    ("linear_silu", lambda x, w: ops.linear(ops.silu(x), w), lambda x, w: ref.silu(x) @ w.T, [(3, 8), (4, 8)]),
    # MindSpore CPU has no bf16 gradient kernel for slicing, broadcast or stack: the contract ops upcast around them
    ("split_cat", lambda x: ops.cat(ops.split(x, [3, 5], 1)[::-1], 1),
     lambda x: np.concatenate([x[:, 3:], x[:, :3]], 1), [(3, 8)]),
    ("expand_repeat_stack",
     lambda x: ops.stack([ops.expand(ops.split(x, [1, 1], 1)[0], (3, 4)), ops.repeat_interleave(x, 2, 1)], 0),
     lambda x: np.stack([np.broadcast_to(x[:, :1], (3, 4)), np.repeat(x, 2, 1)], 0), [(3, 2)]),
    ("moe_loop", lambda x, gate_up, down: ops.moe_experts(x, *_ROUTING, gate_up, down, impl="loop"),
     lambda x, gate_up, down: ref.moe_experts(x, *_ROUTING_NUMPY, gate_up, down), [(4, 8), (3, 8, 6), (3, 3, 8)]),
]
_ROUTING_NUMPY = (np.array([[0.75, 0.25], [1.0, 0.0], [0.5, 0.5], [0.25, 0.75]]),  # weights (T, K)
                  np.array([[0, 2], [1, 0], [2, 1], [0, 1]]))                        # experts (T, K)
_ROUTING = (ops.tensor(_ROUTING_NUMPY[0].astype(np.float32)), ops.tensor(_ROUTING_NUMPY[1]))


@pytest.mark.parametrize("name,backend_fn,reference_fn,shapes", _BF16_GRADIENT_CASES,
                         ids=[case[0] for case in _BF16_GRADIENT_CASES])
def test_bf16_gradients_of_contract_ops_match_the_reference(name, backend_fn, reference_fn, shapes):
    check_op(backend_fn, reference_fn, [random(shape, seed) for seed, shape in enumerate(shapes)], "bfloat16")


def test_bf16_round_trips_through_numpy_bit_exactly():
    array = np.array([1.5, -2.25, 3.0e38, 1.0e-40, np.inf], ml_dtypes.bfloat16)
    tensor = ops.tensor(array)
    assert tensor.dtype == ops.bfloat16
    back = ops.to_numpy(tensor)
    assert back.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.view(np.uint16), array.view(np.uint16))
    filled = ops.to_numpy(ops.full((2,), -0.375, ops.bfloat16))  # P.full has no CPU bf16 kernel
    np.testing.assert_array_equal(filled.astype(np.float32), [-0.375, -0.375])


# ----------------------------------------------------------------------------------------------------------------
# parameter names: exactly torch's state_dict keys, for nested ModuleDict / ModuleList models
# ----------------------------------------------------------------------------------------------------------------

def build_named_model():
    """A tiny decoder shaped like the mm layout: global layer keys in a ModuleDict, a ModuleList, attributes set to
    None, a parameter given to an already attached child, and a tied output layer."""

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear_fc1 = nn.Linear(4, 8, bias=False)
            self.linear_fc2 = nn.Linear(8, 4)

        def forward(self, x):
            return self.linear_fc2(ops.silu(self.linear_fc1(x)))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = nn.RMSNorm(4)
            self.cross_attention = None
            self.mlp = Mlp()

        def forward(self, x):
            return x + self.mlp(self.input_layernorm(x))

    class Decoder(nn.Module):
        def __init__(self, layer_ids):
            super().__init__()
            self.layers = nn.ModuleDict({str(i): Layer() for i in layer_ids})
            self.final_layernorm = nn.RMSNorm(4)

        def forward(self, x):
            for layer in self.layers.values():
                x = layer(x)
            return self.final_layernorm(x)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.decoder = Decoder([0, 3, 10])  # a pipeline stage keeps global layer indices
            self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 3, bias=False)])
            self.output_layer = nn.Linear(4, 10, bias=False)
            self.output_layer.bias = nn.Parameter(ops.zeros((10,)))  # after attaching: auto-prefix misses it
            self.output_layer.weight = self.embedding.weight  # tied

        def forward(self, ids):
            return self.output_layer(self.decoder(self.embedding(ids)))

    return Model()


_EXPECTED_KEYS = (
    ["embedding.weight"]
    + [f"decoder.layers.{i}.{name}" for i in (0, 3, 10)
       for name in ("input_layernorm.weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight", "mlp.linear_fc2.bias")]
    + ["decoder.final_layernorm.weight", "heads.0.weight", "heads.0.bias", "heads.1.weight",
       "output_layer.weight", "output_layer.bias"])


def _torch_keys():
    code = ("import json, test_mindspore_landmines as t; from mmx import nn; m = t.build_named_model(); "
            "print(json.dumps([list(nn.state_dict(m)), [n for n, _ in nn.named_parameters(m)]]))")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MMX_BACKEND="torch",
               PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], cwd=here, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parameter_names_equal_torch_state_dict_keys():
    model = build_named_model()
    keys = list(nn.state_dict(model))
    named = [name for name, _ in nn.named_parameters(model)]
    assert keys == _EXPECTED_KEYS
    assert named == [key for key in _EXPECTED_KEYS if key != "output_layer.weight"]  # tied: listed once
    assert [param.name for _, param in nn.named_parameters(model)] == named  # MindSpore's own names agree
    torch_keys, torch_named = _torch_keys()
    assert keys == torch_keys and named == torch_named


def test_named_model_forward_uses_the_loaded_weights():
    model = build_named_model()
    generator = np.random.default_rng(0)
    values = {name: generator.standard_normal(tuple(p.shape)).astype(np.float32)
              for name, p in nn.state_dict(model).items() if name != "output_layer.weight"}
    values["output_layer.weight"] = values["embedding.weight"]
    nn.load_state_dict(model, values)
    ids = np.array([[1, 7, 3]])
    out = ops.to_numpy(model(ops.tensor(ids)))

    def rms(x, w):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w

    x = values["embedding.weight"][ids].astype(np.float64)
    for i in (0, 3, 10):
        prefix = f"decoder.layers.{i}."
        hidden = rms(x, values[prefix + "input_layernorm.weight"]) @ values[prefix + "mlp.linear_fc1.weight"].T
        x = x + ref.silu(hidden) @ values[prefix + "mlp.linear_fc2.weight"].T + values[prefix + "mlp.linear_fc2.bias"]
    want = rms(x, values["decoder.final_layernorm.weight"]) @ values["embedding.weight"].T + values["output_layer.bias"]
    np.testing.assert_allclose(out, want, atol=1e-4)


def test_requires_grad_device_and_inference_mode():
    layer = nn.Linear(2, 2)
    nn.set_requires_grad(layer.weight, False)
    assert layer.weight.requires_grad is False and layer.bias.requires_grad is True
    assert nn.to_device(layer, "cpu") is layer
    with pytest.raises(ValueError, match="MMX_DEVICE=ascend"):
        nn.to_device(layer, "ascend")
    with nn.inference_mode():
        out = layer(ops.ones((1, 2)))
    assert tuple(out.shape) == (1, 2)
