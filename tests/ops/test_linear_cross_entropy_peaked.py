"""ops.linear_cross_entropy on peaked logits (a trained model's, not a random one's): rows whose target takes
nearly all the probability (softmax - one_hot cancels at the target) and rows whose target is far below the top
(loss ~40), logits up to ~150, so most exponentials underflow. Loss and both gradients against float64 numpy,
float32, chunks that do not divide the rows. The MindSpore kernel forms the gradient as ``exps`` with the target
entry set to ``exps[target] - sum`` and scales rows after the GEMMs; this checks that reformulation where it
cancels."""
import numpy as np
import pytest

from mmx import ops
from ops_harness import check_op, random

ROWS, WIDTH, VOCAB = 24, 16, 400


def _inputs():
    weight = random((VOCAB, WIDTH), 12) * 3.0
    hidden = random((ROWS, WIDTH), 11)
    chosen = np.random.default_rng(14).integers(0, VOCAB, ROWS)
    hidden[0::2] = weight[chosen[0::2]] * 0.8           # even rows point at their target: logits up to ~150
    order = np.argsort(hidden @ weight.T, -1)
    labels = np.where(np.arange(ROWS) % 2 == 0, order[:, -1], order[:, VOCAB // 3])  # top-1 / far below it
    labels[5] = -100
    weights = np.random.default_rng(13).uniform(0.2, 1.0, ROWS)
    return hidden, weight, labels, weights


def _reference(hidden, weight, labels, weights):
    logits = hidden @ weight.T
    top = logits.max(-1, keepdims=True)
    lse = (np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top)[:, 0]
    valid = labels != -100
    safe = np.where(valid, labels, 0)
    scale = np.where(valid, weights, 0.0)
    grad_logits = np.exp(logits - lse[:, None])
    grad_logits[np.arange(ROWS), safe] -= 1.0
    grad_logits *= scale[:, None]
    loss = float(np.sum((lse - logits[np.arange(ROWS), safe]) * scale))
    return loss, grad_logits @ weight, grad_logits.T @ hidden


@pytest.mark.parametrize("chunk", [5, None])
def test_linear_cross_entropy_peaked_logits_match_float64(chunk):
    hidden, weight, labels, weights = _inputs()
    probs_at_target = np.exp(_log_softmax(hidden @ weight.T)[np.arange(ROWS), np.maximum(labels, 0)])
    confident, far = probs_at_target[0::2], probs_at_target[1::2]   # the cases are as described
    assert np.median(confident) > 0.9999 and confident.min() > 0.5 and far.max() < 1e-6, (confident, far)
    label_tensor, weight_tensor = ops.tensor(labels), ops.tensor(weights.astype(np.float32))

    def reference_grads(h, w, cotangent):
        _, grad_hidden, grad_weight = _reference(h, w, labels, weights)
        return [grad_hidden * cotangent, grad_weight * cotangent]

    forward, backward = check_op(
        lambda h, w: ops.linear_cross_entropy(h, w, label_tensor, weight_tensor, chunk),
        lambda h, w: _reference(h, w, labels, weights)[0], [hidden, weight], "float32", out_dtype="float32",
        reference_grads=reference_grads)
    assert forward <= 1e-6 and backward <= 1e-6, (forward, backward)


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
