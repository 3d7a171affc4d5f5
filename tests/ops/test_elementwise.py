"""Elementwise ops and reductions against numpy, forward and backward, in every dtype the backend computes in."""
import numpy as np
import pytest

import ops_reference as ref
from mmx import ops
from ops_harness import DTYPES, check_op, random

SHAPE = (3, 7)

# (name, backend fn, reference fn, input range or None for standard normal)
UNARY = [
    ("exp", ops.exp, np.exp, None),
    ("log", ops.log, np.log, (0.5, 3.0)),
    ("sqrt", ops.sqrt, np.sqrt, (0.5, 3.0)),
    ("rsqrt", ops.rsqrt, lambda x: 1.0 / np.sqrt(x), (0.5, 3.0)),
    ("cos", ops.cos, np.cos, None),
    ("sin", ops.sin, np.sin, None),
    ("sigmoid", ops.sigmoid, ref.sigmoid, None),
    ("silu", ops.silu, ref.silu, None),
    ("gelu", ops.gelu, ref.gelu, None),
    ("gelu_tanh", lambda x: ops.gelu(x, approximate="tanh"), lambda x: ref.gelu(x, "tanh"), None),
    ("quick_gelu", ops.quick_gelu, ref.quick_gelu, None),
    ("neg_add_mul", lambda x: -x * 2.0 + x * x - 1.0, lambda x: -x * 2.0 + x * x - 1.0, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,backend_fn,reference_fn,value_range", UNARY, ids=[u[0] for u in UNARY])
def test_unary(name, backend_fn, reference_fn, value_range, dtype):
    low, high = value_range or (None, None)
    check_op(backend_fn, reference_fn, [random(SHAPE, 1, low, high)], dtype)


REDUCTIONS = [
    ("sum_all", lambda x: ops.sum(x), lambda x: x.sum()),
    ("sum_dim", lambda x: ops.sum(x, 1), lambda x: x.sum(1)),
    ("sum_tuple_keepdim", lambda x: ops.sum(x, (0, 2), keepdim=True), lambda x: x.sum((0, 2), keepdims=True)),
    ("mean_all", lambda x: ops.mean(x), lambda x: x.mean()),
    ("mean_dim_keepdim", lambda x: ops.mean(x, -1, keepdim=True), lambda x: x.mean(-1, keepdims=True)),
    ("amax_all", lambda x: ops.amax(x), lambda x: x.max()),
    ("amax_dim", lambda x: ops.amax(x, 1), lambda x: x.max(1)),
    ("softmax", lambda x: ops.softmax(x, -1), lambda x: ref.softmax(x, -1)),
    ("softmax_dim1", lambda x: ops.softmax(x, 1), lambda x: ref.softmax(x, 1)),
    ("log_softmax", lambda x: ops.log_softmax(x), lambda x: ref.log_softmax(x)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,backend_fn,reference_fn", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_reduction(name, backend_fn, reference_fn, dtype):
    check_op(backend_fn, reference_fn, [random((2, 3, 5), 2)], dtype)


def test_softmax_keeps_large_logits_finite():
    # computed in float32 even for half inputs: 60000 overflows exp in fp16 without the max shift / upcast
    for dtype in DTYPES:
        x = ops.cast(ops.tensor(np.array([[60000.0, 0.0, -60000.0]], dtype=np.float32)), getattr(ops, dtype))
        np.testing.assert_array_equal(np.asarray(ops.to_numpy(ops.softmax(x)), dtype=np.float64), [[1.0, 0.0, 0.0]])
