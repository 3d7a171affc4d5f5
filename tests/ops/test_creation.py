"""Tensor creation, numpy interop (bf16 bit-exact), dtypes, cast and stop_gradient."""
import ml_dtypes
import numpy as np
import pytest

from mmx import backend, ops
from ops_harness import DTYPES, random

NUMPY_OF = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
            "int32": np.int32, "int64": np.int64, "bool_": np.bool_}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int64", "bool_"])
def test_numpy_round_trip_is_bit_exact(dtype):
    # Interop covers every dtype (bf16 crosses as ml_dtypes.bfloat16), even where the backend does not compute in it.
    values = (random((3, 5), 1) * 100).astype(NUMPY_OF[dtype])
    t = ops.tensor(values)
    assert t.dtype == getattr(ops, dtype)
    back = ops.to_numpy(t)
    assert back.dtype == values.dtype and back.shape == (3, 5)
    assert back.tobytes() == values.tobytes()


def test_tensor_copies_any_numpy_layout():
    for array in (np.arange(6.0, dtype=np.float32)[::-1], np.arange(6, dtype=np.int64).reshape(2, 3).T,
                  np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16)[::-2], np.float32(2.5)):
        back = ops.to_numpy(ops.tensor(array))
        assert back.dtype == array.dtype and back.tobytes() == np.ascontiguousarray(array).tobytes()
    source = np.zeros(3, np.float32)
    t = ops.tensor(source)
    source[0] = 9.0                                                             # the tensor owns its memory
    assert ops.to_numpy(t)[0] == 0.0


def test_to_numpy_is_a_copy_and_tensor_accepts_python_data():
    t = ops.tensor(np.ones((2, 2), dtype=np.float32))
    copy = ops.to_numpy(t)
    copy[0, 0] = 5.0
    assert ops.to_numpy(t)[0, 0] == 1.0
    assert ops.tensor([[1, 2], [3, 4]]).dtype == ops.int64
    assert ops.tensor([0.5, 1.5]).dtype == ops.float32
    np.testing.assert_array_equal(ops.to_numpy(ops.tensor([1, 2], ops.float16)), np.array([1, 2], np.float16))
    assert ops.to_numpy(ops.tensor(np.ones(3, ml_dtypes.bfloat16), ops.float32)).dtype == np.float32


def test_creation_defaults_and_dtypes():
    assert ops.zeros((2, 3)).dtype == ops.float32 and tuple(ops.zeros((2, 3)).shape) == (2, 3)
    assert ops.ones((4,), ops.int32).dtype == ops.int32
    np.testing.assert_array_equal(ops.to_numpy(ops.ones((2,), ops.bfloat16)).astype(np.float32), [1, 1])
    np.testing.assert_array_equal(ops.to_numpy(ops.full((2, 2), 3.5)), np.full((2, 2), 3.5, np.float32))
    assert ops.full((1,), 7, ops.int64).dtype == ops.int64
    like = ops.zeros_like(ops.ones((3, 1), ops.float16))
    assert like.dtype == ops.float16 and float(ops.to_numpy(like).sum()) == 0.0
    np.testing.assert_array_equal(ops.to_numpy(ops.arange(4)), [0, 1, 2, 3])
    assert ops.arange(4).dtype == ops.int64
    np.testing.assert_array_equal(ops.to_numpy(ops.arange(2, 9, 3)), [2, 5, 8])
    np.testing.assert_allclose(ops.to_numpy(ops.arange(0, 1, 0.25, ops.float32)), [0, 0.25, 0.5, 0.75])


def test_randn_is_reproducible_and_standard_normal():
    a, b = ops.to_numpy(ops.randn((20000,), seed=3)), ops.to_numpy(ops.randn((20000,), seed=3))
    c = ops.to_numpy(ops.randn((20000,), seed=4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    assert a.dtype == np.float32
    assert abs(a.mean()) < 0.03 and abs(a.std() - 1.0) < 0.03
    assert ops.randn((2, 3), ops.float16, seed=1).dtype == ops.float16


@pytest.mark.parametrize("target", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_between_floats_rounds_like_numpy_and_passes_gradients(dtype, target):
    values = random((3, 4), 1).astype(NUMPY_OF[dtype])
    x = ops.tensor(values)
    out = ops.to_numpy(ops.cast(x, getattr(ops, target)))
    assert out.dtype == NUMPY_OF[target]
    assert out.tobytes() == values.astype(NUMPY_OF[target]).tobytes()       # round to nearest even, as numpy
    cotangent = ops.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    _, (grad,) = backend.get().autograd.value_and_grad(
        lambda t: ops.sum(ops.cast(ops.cast(t, getattr(ops, target)), ops.float32) * cotangent), [x])
    assert grad.dtype == getattr(ops, dtype)
    np.testing.assert_array_equal(ops.to_numpy(grad).astype(np.float32), ops.to_numpy(cotangent))


def test_cast_float_to_int_truncates_and_bool():
    x = ops.tensor(np.array([1.7, -2.2, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(ops.to_numpy(ops.cast(x, ops.int32)), [1, -2, 0])
    np.testing.assert_array_equal(ops.to_numpy(ops.cast(x, ops.bool_)), [True, True, False])


def test_stop_gradient_blocks_the_gradient():
    x = ops.tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    value, (grad,) = backend.get().autograd.value_and_grad(
        lambda t: ops.sum(t * t + ops.stop_gradient(t) * t), [x])
    assert float(ops.to_numpy(value)) == pytest.approx(28.0)
    np.testing.assert_allclose(ops.to_numpy(grad), [3.0, 6.0, 9.0])            # 2x + x, not 2x + 2x
