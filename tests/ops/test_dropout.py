"""ops.dropout: inverted dropout from the backend's seeded global generator, forward and backward (the same mask)."""
import numpy as np
import pytest

from mmx import backend, ops


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(p):
    x = np.random.RandomState(0).uniform(0.5, 1.5, (200, 300)).astype(np.float32)
    backend.get().train.set_seed(7)
    out = ops.to_numpy(ops.dropout(ops.tensor(x), p))
    kept = out != 0
    assert abs(1 - kept.mean() - p) < 0.01                       # 60,000 draws: 4 sigma < 0.01
    assert np.abs(out[kept] - x[kept] / (1 - p)).max() <= 1e-6
    backend.get().train.set_seed(7)                               # the generator's seed decides the mask
    assert np.array_equal(ops.to_numpy(ops.dropout(ops.tensor(x), p)), out)
    other = ops.to_numpy(ops.dropout(ops.tensor(x), p))
    assert not np.array_equal(other, out)                         # and it advances


def test_dropout_backward_uses_the_forward_mask():
    x = np.random.RandomState(1).uniform(0.5, 1.5, (64, 50)).astype(np.float32)
    outputs = []

    def loss(t):
        y = ops.dropout(t, 0.3)
        outputs.append(y)
        return ops.sum(y * y)

    _, (grad,) = backend.get().autograd.value_and_grad(loss, [ops.tensor(x)])
    y = ops.to_numpy(outputs[-1])
    # d/dx sum(y^2) = 2 y * mask / (1 - p) = 2 y / (1 - p) where kept, 0 where dropped
    assert np.abs(ops.to_numpy(grad) - 2 * y / 0.7).max() <= 1e-5


def test_dropout_with_p_zero_is_the_identity():
    x = ops.tensor(np.arange(6, dtype=np.float32))
    assert np.array_equal(ops.to_numpy(ops.dropout(x, 0.0)), np.arange(6, dtype=np.float32))
