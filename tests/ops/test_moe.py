"""MoE ops (router, permute, grouped matmul, unpermute) and every MoE kernel against numpy and against ``loop``."""
import numpy as np
import pytest

import ops_reference as ref
import tolerances
from mmx import backend, ops
from ops_harness import DTYPES, as_float64, check_op, error, random, rounded, to_backend

KERNELS = backend.get().kernels.available_moe_kernels()
INDICES = np.array([[2, 0], [0, 1], [2, 1], [0, 2], [1, 0], [2, 0]])               # (T=6, K=2) over E=3 experts


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_router_topk(normalize, dtype):
    logits = random((6, 5), 1) * 2
    check_op(lambda x: ops.router_topk(x, 2, normalize)[0], lambda x: ref.router_topk(x, 2, normalize)[0],
             [logits], dtype, out_dtype="float32")
    indices = ops.router_topk(to_backend(rounded(logits, dtype), dtype), 2, normalize)[1]
    assert indices.dtype == ops.int64
    np.testing.assert_array_equal(ops.to_numpy(indices), ref.router_topk(rounded(logits, dtype), 2)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_router_linear_is_float32(dtype):
    x, weight = random((6, 8), 1), random((4, 8), 2)
    got = ops.router_linear(to_backend(rounded(x, dtype), dtype), to_backend(rounded(weight, dtype), dtype))
    assert got.dtype == ops.float32
    want = rounded(x, dtype) @ rounded(weight, dtype).T
    assert np.abs(ops.to_numpy(got) - want).max() <= 1e-5


@pytest.mark.backend("torch")    # MindSpore trains in fp32 only (no mixed-precision context)
def test_router_linear_stays_float32_under_the_bf16_training_step():
    import importlib

    train = importlib.import_module(f"{backend.get().__name__}.train")
    x, weight = random((6, 8), 1), random((4, 8), 2)
    with train._autocast("bf16", []):  # noqa: SLF001 - the step's own mixed-precision context
        got = ops.router_linear(ops.tensor(x.astype(np.float32)), ops.tensor(weight.astype(np.float32)))
        plain = ops.linear(ops.tensor(x.astype(np.float32)), ops.tensor(weight.astype(np.float32)))
    assert got.dtype == ops.float32 and plain.dtype == ops.bfloat16            # autocast would round it
    assert np.abs(ops.to_numpy(got) - x @ weight.T).max() <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_indices_breaks_ties_by_index(dtype):
    # planted ties across the top-k boundary (torch.topk on CPU picks [1, 4] of the first row), -inf entries
    # (GLM-4.5V's masked expert groups) and a batch dimension
    x = np.array([[[0.5, 0.7, 0.7, 0.1, 0.7, 0.2, 0.5, 0.5], [1.0] * 8],
                  [[0.0, -np.inf, 0.0, -np.inf, 2.0, 2.0, -1.0, 0.0], [-np.inf] * 4 + [0.25, 0.5, 0.25, 0.5]]],
                 np.float32)
    x = np.concatenate([x, np.round(random((2, 2, 8), 2), 1)])                  # rounded: more ties
    for k in (1, 2, 3, 5, 8):
        got = ops.topk_indices(to_backend(rounded(x, dtype), dtype), k)
        assert got.dtype == ops.int64
        np.testing.assert_array_equal(ops.to_numpy(got), ref.topk_indices(rounded(x, dtype), k))
    assert ops.to_numpy(ops.topk_indices(ops.tensor(x[:1, :1]), 2)).tolist() == [[[1, 2]]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_permute(dtype):
    permuted_ref, order_ref, counts_ref = ref.moe_permute(random((6, 4), 1), INDICES, 3)
    check_op(lambda x: ops.moe_permute(x, ops.tensor(INDICES), 3)[0], lambda x: ref.moe_permute(x, INDICES, 3)[0],
             [random((6, 4), 1)], dtype)
    _, order, tokens_per_expert = ops.moe_permute(ops.zeros((6, 4)), ops.tensor(INDICES), 3)
    assert order.dtype == ops.int64 and tokens_per_expert.dtype == ops.int64
    np.testing.assert_array_equal(ops.to_numpy(order), order_ref)             # stable within an expert
    np.testing.assert_array_equal(ops.to_numpy(tokens_per_expert), counts_ref)
    assert permuted_ref.shape == (12, 4)


@pytest.mark.parametrize("sizes", [(8, 16), (6, 5)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_matmul_with_an_empty_expert(sizes, dtype):
    cin, cout = sizes
    counts = np.array([2, 0, 5])
    counts_tensor = ops.tensor(counts)
    check_op(lambda x, w: ops.grouped_matmul(x, w, counts_tensor), lambda x, w: ref.grouped_matmul(x, w, counts),
             [random((7, cin), 1), random((3, cin, cout), 2)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_unpermute_combines_weighted_copies(dtype):
    _, order, _ = ref.moe_permute(np.zeros((6, 1)), INDICES, 3)
    order_tensor = ops.tensor(order)
    check_op(lambda p, w: ops.moe_unpermute(p, order_tensor, w), lambda p, w: ref.moe_unpermute(p, order, w),
             [random((12, 4), 1), random((6, 2), 2, 0.1, 0.9)], dtype)


def _experts_inputs(hidden, ffn):
    return [random((6, hidden), 1), random((6, 2), 2, 0.1, 0.9), random((3, hidden, 2 * ffn), 3) * 0.5,
            random((3, ffn, hidden), 4) * 0.5]


def _experts(impl):
    indices = ops.tensor(INDICES)
    return lambda x, w, gate_up, down: ops.moe_experts(x, w, indices, gate_up, down, impl=impl)


@pytest.mark.parametrize("sizes", [(8, 8), (6, 5)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", KERNELS)
def test_experts_kernel_matches_numpy(impl, dtype, sizes):
    check_op(_experts(impl), lambda x, w, gu, d: ref.moe_experts(x, w, INDICES, gu, d), _experts_inputs(*sizes),
             dtype)


def _forward_and_grads(impl, tensors, cotangent):
    out = _experts(impl)(*tensors)
    _, grads = backend.get().autograd.value_and_grad(
        lambda *xs: ops.sum(ops.cast(_experts(impl)(*xs), ops.float32) * cotangent), tensors)
    return [as_float64(out)] + [as_float64(g) for g in grads]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", [name for name in KERNELS if name != "loop"])
def test_experts_kernel_matches_loop(impl, dtype):
    tensors = [to_backend(rounded(a, dtype), dtype) for a in _experts_inputs(8, 8)]
    cotangent = ops.tensor(random((6, 8), 5).astype(np.float32))
    got, want = _forward_and_grads(impl, tensors, cotangent), _forward_and_grads("loop", tensors, cotangent)
    worst = max(error(g, w) for g, w in zip(got, want))
    assert worst <= tolerances.KERNEL_VS_EAGER[dtype], f"{impl} vs loop: {worst:.3g} in {dtype}"


def test_auto_matches_loop():
    test_experts_kernel_matches_loop("auto", DTYPES[-1])


def test_unknown_moe_kernel_is_an_error():
    tensors = [ops.tensor(a.astype(np.float32)) for a in _experts_inputs(8, 8)]
    with pytest.raises(ValueError, match="unknown moe kernel 'no_such'"):
        ops.moe_experts(*tensors[:2], ops.tensor(INDICES), *tensors[2:], impl="no_such")
    assert "loop" in KERNELS


IDLE_INDICES = np.array([[2, 0], [0, 2], [2, 1], [0, 2], [1, 0], [2, 0]])           # expert 3 of 4 gets no token


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", KERNELS)
def test_experts_kernel_with_an_idle_expert_matches_numpy_and_loop(impl, dtype):
    """An expert no token picks (zero rows in both grouped GEMMs) still gets a zero gradient, forward and backward
    equal the numpy reference and the loop."""
    indices = ops.tensor(IDLE_INDICES)
    inputs = [random((6, 8), 1), random((6, 2), 2, 0.1, 0.9), random((4, 8, 12), 3) * 0.5,
              random((4, 6, 8), 4) * 0.5]

    def experts(x, w, gate_up, down, kernel=impl):
        return ops.moe_experts(x, w, indices, gate_up, down, impl=kernel)
    check_op(experts, lambda x, w, gu, d: ref.moe_experts(x, w, IDLE_INDICES, gu, d), inputs, dtype)
    tensors = [to_backend(rounded(a, dtype), dtype) for a in inputs]
    cotangent = ops.tensor(random((6, 8), 5).astype(np.float32))
    results = {}
    for kernel in (impl, "loop"):
        _, grads = backend.get().autograd.value_and_grad(
            lambda *xs, k=kernel: ops.sum(ops.cast(experts(*xs, kernel=k), ops.float32) * cotangent), tensors)
        results[kernel] = [as_float64(g) for g in grads]
    for name, index in (("gate_up", 2), ("down", 3)):
        assert np.abs(results[impl][index][3]).max() == 0, f"{impl}: idle expert's {name} gradient is not zero"
    worst = max(error(g, w) for g, w in zip(results[impl], results["loop"]))
    assert worst <= tolerances.KERNEL_VS_EAGER[dtype], f"{impl} vs loop: {worst:.3g} in {dtype}"
