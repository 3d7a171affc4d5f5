"""Check one op on the current backend against its numpy reference, forward and backward (tinygrad's helper_test_op).

Inputs are drawn in float64, rounded to the dtype under test, and the reference sees the rounded values, so the
measured error is the backend's own. Backward: the gradient of ``sum(out * cotangent)`` from the backend's
``autograd.value_and_grad`` against central differences of the float64 reference.
"""
import os

import ml_dtypes
import numpy as np

import tolerances
from mmx import backend, ops
from ops_reference import numeric_grads

BACKEND = backend.name()
DTYPES = tolerances.compute_dtypes(BACKEND)
RESULTS = []  # (test id, dtype, forward error, backward error) for the summary printed by tests/ops/conftest.py
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float64": np.float64}


def rounded(array, dtype_name):
    """``array`` rounded to ``dtype_name`` and back to float64."""
    return np.asarray(array).astype(_NUMPY[dtype_name]).astype(np.float64)


def to_backend(array, dtype_name):
    """A backend tensor of ``dtype_name`` holding ``array`` (already representable in that dtype)."""
    return ops.cast(ops.tensor(np.asarray(array, dtype=np.float32)), getattr(ops, dtype_name))


def as_float64(tensor):
    return np.asarray(ops.to_numpy(tensor)).astype(np.float64)


def error(got, want):
    """max|got - want| / max(1, max|want|) (see tests/tolerances.py)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    if got.size == 0:
        return 0.0
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def random(shape, seed, low=None, high=None):
    generator = np.random.default_rng(seed)
    if low is not None:
        return generator.uniform(low, high, size=shape)
    return generator.standard_normal(shape)


def check_op(backend_fn, reference_fn, arrays, dtype_name, grad=True, out_dtype="same", seed=0,
             reference_grads=None):
    """Assert ``backend_fn(*tensors)`` matches ``reference_fn(*arrays)`` in ``dtype_name``; returns the errors.

    ``arrays``: float64 inputs (the differentiable ones; close over the rest). ``out_dtype``: the dtype name the op
    must return (``"same"``: the input dtype). ``reference_grads(*arrays, cotangent)``: analytic gradients to use
    instead of finite differences (for ops whose finite differences would be slow).
    """
    arrays = [rounded(a, dtype_name) for a in arrays]
    tensors = [to_backend(a, dtype_name) for a in arrays]
    want = np.asarray(reference_fn(*arrays), dtype=np.float64)
    out = backend_fn(*tensors)
    expected_dtype = getattr(ops, dtype_name if out_dtype == "same" else out_dtype)
    assert out.dtype == expected_dtype, f"output dtype {out.dtype}, expected {expected_dtype}"
    forward = error(as_float64(out), want)
    if forward > tolerances.FORWARD[dtype_name]:
        _record(dtype_name, forward, None)
    assert forward <= tolerances.FORWARD[dtype_name], f"forward error {forward:.3g} in {dtype_name}"
    if not grad:
        _record(dtype_name, forward, None)
        return forward, None
    cotangent = rounded(random(want.shape, seed + 1000), dtype_name)
    cotangent_tensor = ops.tensor(cotangent.astype(np.float32))

    def loss(*xs):
        return ops.sum(ops.cast(backend_fn(*xs), ops.float32) * cotangent_tensor)

    _, grads = backend.get().autograd.value_and_grad(loss, tensors)
    if reference_grads is not None:
        want_grads = reference_grads(*arrays, cotangent)
    else:
        want_grads = numeric_grads(lambda *xs: float((reference_fn(*xs) * cotangent).sum()), arrays)
    backward = max(error(as_float64(g), w) for g, w in zip(grads, want_grads))
    _record(dtype_name, forward, backward)
    assert backward <= tolerances.BACKWARD[dtype_name], f"backward error {backward:.3g} in {dtype_name}"
    return forward, backward


def _record(dtype_name, forward, backward):
    test_id = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    RESULTS.append((test_id, dtype_name, forward, backward))
