"""Every attention kernel available here against the float64 numpy reference and against ``eager``, forward and
backward, on each masking case of the contract (causal, full, bottom-right decode, GQA, window, padding, varlen)."""
import numpy as np
import pytest

import ops_reference as ref
import tolerances
from mmx import backend, ops
from ops_harness import DTYPES, as_float64, check_op, error, random, rounded, to_backend

KERNELS = backend.get().kernels.available_attention_kernels()
PADDING = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=bool)
CU_SEQLENS = np.array([0, 3, 8, 12], dtype=np.int32)                               # 3 sequences: 3, 5, 4 tokens
EQUAL_SEQLENS = np.array([0, 4, 8, 12], dtype=np.int32)                            # 3 x 4 tokens (ViT windows)
REPEATED_SEQLENS = np.array([0, 3, 5, 8, 9, 12], dtype=np.int32)                   # 3, 2, 3, 1, 3 tokens
MANY_SEQLENS = np.concatenate([[0], np.cumsum(np.arange(1, 10))]).astype(np.int32)  # 9 lengths: 1 .. 9 tokens

# name: (q shape, k/v shape, options); dense (B, S, H, D), varlen (T, H, D) with cu_seqlens
CASES = {
    "full_scaled": ((2, 5, 2, 4), (2, 7, 2, 4), {"scale": 0.9}),
    "causal": ((2, 6, 2, 4), (2, 6, 2, 4), {"causal": True}),
    "causal_bottom_right": ((2, 3, 2, 4), (2, 7, 2, 4), {"causal": True}),
    "causal_rows_without_keys": ((1, 5, 2, 4), (1, 3, 2, 4), {"causal": True}),
    "gqa_causal": ((2, 5, 4, 4), (2, 5, 2, 4), {"causal": True}),
    "window": ((2, 6, 2, 4), (2, 6, 2, 4), {"causal": True, "window": 3}),
    "key_padding": ((2, 5, 2, 4), (2, 7, 2, 4), {"key_padding_mask": PADDING}),
    "key_padding_causal_gqa": ((2, 4, 4, 4), (2, 7, 2, 4), {"causal": True, "key_padding_mask": PADDING}),
    "varlen": ((12, 2, 4), (12, 2, 4), {"cu_seqlens": CU_SEQLENS}),
    "varlen_causal_gqa": ((12, 4, 4), (12, 2, 4), {"cu_seqlens": CU_SEQLENS, "causal": True}),
    "varlen_window": ((12, 2, 4), (12, 2, 4), {"cu_seqlens": CU_SEQLENS, "causal": True, "window": 2}),
    # MindSpore's math kernel batches sequences of equal length (one group; groups through a permutation) and
    # falls back to one block-diagonal matmul over more than 8 distinct lengths
    "varlen_equal": ((12, 2, 4), (12, 2, 4), {"cu_seqlens": EQUAL_SEQLENS}),
    "varlen_repeated_causal_gqa": ((12, 4, 4), (12, 2, 4), {"cu_seqlens": REPEATED_SEQLENS, "causal": True}),
    "varlen_many_lengths_causal": ((45, 2, 4), (45, 2, 4), {"cu_seqlens": MANY_SEQLENS, "causal": True}),
}


def _backend_options(options):
    converted = dict(options)
    for key in ("key_padding_mask", "cu_seqlens"):
        if key in converted:
            converted[key] = ops.tensor(converted[key])
    return converted


def _reference(options):
    if "cu_seqlens" in options:
        return lambda q, k, v: ref.attention_varlen(q, k, v, options["cu_seqlens"], options.get("causal", False),
                                                    options.get("window"), options.get("scale"))
    return lambda q, k, v: ref.attention_dense(q, k, v, options.get("causal", False), options.get("window"),
                                               options.get("key_padding_mask"), options.get("scale"))


def _reference_grads(options):
    if "cu_seqlens" in options:
        return lambda q, k, v, dout: ref.attention_varlen_grads(
            q, k, v, dout, options["cu_seqlens"], options.get("causal", False), options.get("window"),
            options.get("scale"))
    return lambda q, k, v, dout: ref.attention_dense_grads(
        q, k, v, dout, options.get("causal", False), options.get("window"), options.get("key_padding_mask"),
        options.get("scale"))


@pytest.mark.parametrize("case", list(CASES))
def test_reference_gradients_match_finite_differences(case):
    # the analytic numpy gradients used below are themselves checked once per case
    options = CASES[case][2]
    arrays = _inputs(case)
    dout = random(CASES[case][0], 4)
    numeric = ref.numeric_grads(lambda *xs: float((_reference(options)(*xs) * dout).sum()), arrays)
    for analytic, expected in zip(_reference_grads(options)(*arrays, dout), numeric):
        assert error(analytic, expected) < 1e-7


def _inputs(case):
    q_shape, kv_shape, _ = CASES[case]
    return [random(q_shape, 1), random(kv_shape, 2), random(kv_shape, 3)]


def _kernel(impl, options):
    backend_options = _backend_options(options)
    return lambda q, k, v: ops.attention(q, k, v, impl=impl, **backend_options)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_matches_numpy_reference(impl, case, dtype):
    options = CASES[case][2]
    check_op(_kernel(impl, options), _reference(options), _inputs(case), dtype,
             reference_grads=_reference_grads(options))


def _forward_and_grads(impl, options, tensors, cotangent):
    def loss(q, k, v):
        return ops.sum(ops.cast(_kernel(impl, options)(q, k, v), ops.float32) * cotangent)
    out = _kernel(impl, options)(*tensors)
    _, grads = backend.get().autograd.value_and_grad(loss, tensors)
    return [as_float64(out)] + [as_float64(g) for g in grads]


def _check_against_eager(impl, case, dtype):
    options = CASES[case][2]
    tensors = [to_backend(rounded(a, dtype), dtype) for a in _inputs(case)]
    cotangent = ops.tensor(random(CASES[case][0], 4).astype(np.float32))
    got = _forward_and_grads(impl, options, tensors, cotangent)
    want = _forward_and_grads("eager", options, tensors, cotangent)
    worst = max(error(g, w) for g, w in zip(got, want))
    assert worst <= tolerances.KERNEL_VS_EAGER[dtype], f"{impl} vs eager: {worst:.3g} in {dtype}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", [name for name in KERNELS if name != "eager"])
def test_kernel_matches_eager(impl, case, dtype):
    _check_against_eager(impl, case, dtype)


@pytest.mark.parametrize("case", ["causal", "key_padding_causal_gqa", "varlen_causal_gqa"])
def test_auto_matches_eager(case):
    _check_against_eager("auto", case, DTYPES[-1])


def test_rows_that_see_no_key_are_zero_and_padded_keys_are_ignored():
    q, k, v = (ops.tensor(a.astype(np.float32)) for a in _inputs("key_padding"))
    for impl in KERNELS:
        out = ops.to_numpy(ops.attention(q, k, v, key_padding_mask=ops.tensor(PADDING.astype(np.int64)),
                                         impl=impl))
        # changing what sits in padded key slots changes nothing
        k_changed = ops.to_numpy(k).copy()
        k_changed[0, 5:] = 100.0
        again = ops.to_numpy(ops.attention(q, ops.tensor(k_changed), v, key_padding_mask=ops.tensor(PADDING),
                                           impl=impl))
        np.testing.assert_allclose(out, again, atol=1e-6)
        short = ops.to_numpy(ops.attention(*(ops.tensor(a.astype(np.float32)) for a in
                                             _inputs("causal_rows_without_keys")), causal=True, impl=impl))
        assert np.all(short[:, :2] == 0.0) and np.all(np.abs(short[:, 2:]).sum(-1) > 0)


def test_bad_calls_name_the_problem():
    q = ops.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="window"):
        ops.attention(q, q, q, window=2)
    with pytest.raises(ValueError, match="unknown attention kernel 'no_such'"):
        ops.attention(q, q, q, impl="no_such")
    with pytest.raises(ValueError, match="query heads"):
        ops.attention(ops.zeros((1, 4, 3, 4)), q, q)
    packed = ops.zeros((5, 2, 4))
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.attention(packed, packed, packed, cu_seqlens=ops.tensor(np.array([0, 2, 4], dtype=np.int32)))
    assert "eager" in KERNELS


def test_unavailable_kernels_refuse_by_name_and_list_the_usable_ones():
    registered = backend.get().kernels.ATTENTION
    q = ops.zeros((1, 4, 2, 4))
    unavailable = [name for name in registered if name not in KERNELS]
    for name in unavailable:
        with pytest.raises(ValueError, match=f"'{name}' cannot run this call.*Usable here: .*eager"):
            ops.attention(q, q, q, impl=name)
    assert set(KERNELS) <= set(registered)
