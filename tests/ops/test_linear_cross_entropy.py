"""ops.linear_cross_entropy (chunked output layer + weighted cross entropy, no (N, V) logits) against a float64 numpy
reference and against the plain path it replaces (ops.linear → ops.cross_entropy → weighted sum), forward and
backward, on the current backend; chunk sizes that do not divide the rows, ignored labels and zero weights."""
import numpy as np
import pytest

import tolerances
from mmx import backend, ops
from ops_harness import DTYPES, check_op, random

ROWS, WIDTH, VOCAB = 37, 24, 300
LABELS = np.random.default_rng(5).integers(0, VOCAB, ROWS)
LABELS[[0, 7, 20]] = -100                     # ignored targets
WEIGHTS = np.random.default_rng(6).uniform(0.1, 1.0, ROWS)
WEIGHTS[[3, 30]] = 0.0                         # a weight-0 row (the trainer's all-prompt placeholder)


def _reference(hidden, weight):
    logits = hidden @ weight.T
    top = logits.max(-1, keepdims=True)
    lse = (np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top)[:, 0]
    valid = LABELS != -100
    picked = logits[np.arange(ROWS), np.where(valid, LABELS, 0)]
    scale = np.where(valid, WEIGHTS, 0.0)
    grad_logits = np.exp(logits - lse[:, None])
    grad_logits[np.arange(ROWS), np.where(valid, LABELS, 0)] -= 1.0
    grad_logits *= scale[:, None]
    return float(np.sum((lse - picked) * scale)), grad_logits @ weight, grad_logits.T @ hidden


def _fused(chunk):
    labels, weights = ops.tensor(LABELS), ops.tensor(WEIGHTS.astype(np.float32))
    return lambda hidden, weight: ops.linear_cross_entropy(hidden, weight, labels, weights, chunk)


@pytest.mark.parametrize("chunk", [8, 37, None])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_linear_cross_entropy_matches_float64(dtype_name, chunk):
    arrays = [random((ROWS, WIDTH), 1), random((VOCAB, WIDTH), 2) * 0.2]

    def reference_grads(hidden, weight, cotangent):
        _, grad_hidden, grad_weight = _reference(hidden, weight)
        return [grad_hidden * cotangent, grad_weight * cotangent]

    check_op(_fused(chunk), lambda h, w: _reference(h, w)[0], arrays, dtype_name, out_dtype="float32",
             reference_grads=reference_grads)


def test_linear_cross_entropy_equals_the_plain_path():
    """float32: the same loss and gradients as logits → cross_entropy → weighted sum, to the kernel tolerance."""
    autograd = backend.get().autograd
    hidden, weight = ops.tensor(random((ROWS, WIDTH), 1).astype(np.float32)), \
        ops.tensor((random((VOCAB, WIDTH), 2) * 0.2).astype(np.float32))
    labels, weights = ops.tensor(LABELS), ops.tensor(WEIGHTS.astype(np.float32))

    def plain(h, w):
        return ops.sum(ops.cross_entropy(ops.linear(h, w), labels, -100, "none") * weights)

    want, want_grads = autograd.value_and_grad(plain, [hidden, weight])
    got, got_grads = autograd.value_and_grad(_fused(10), [hidden, weight])
    bound = tolerances.KERNEL_VS_EAGER["float32"]
    scale = max(1.0, abs(float(ops.to_numpy(want))))
    assert abs(float(ops.to_numpy(got)) - float(ops.to_numpy(want))) / scale <= bound
    for g, w in zip(got_grads, want_grads):
        g, w = ops.to_numpy(g), ops.to_numpy(w)
        assert np.abs(g - w).max() / max(1.0, np.abs(w).max()) <= bound
