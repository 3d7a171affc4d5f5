"""Loss modes: for per_token and per_sample, one global batch split as micro-batch × accumulation in different ways
gives the same loss and the same summed gradients; the default mode (mean per micro-batch) does not."""
import numpy as np
import pytest

from mmx import backend, ops
from mmx.train.loop import model_inputs
from mmx.train.loss import shifted_targets, token_weights, weighted_lm_loss
from tolerances import TRAIN_TOLERANCE
from train_reference import collate, make_dataset, make_model

SPLITS = (4, 1)  # micro-batch sizes for a global batch of 4: one micro-batch, or 4 accumulated (uneven lengths)


def _loss_and_grads(model, samples, micro, mode):
    batches = [collate(samples[k:k + micro]) for k in range(0, len(samples), micro)]
    weights = token_weights(batches, mode)
    prepared = [(model_inputs(model, b), ops.tensor(shifted_targets(b)), ops.tensor(w))
                for b, w in zip(batches, weights)]
    train = backend.get().train
    params = [p for _, p in train.trainable_parameters(model)]
    loss, grads = train.accumulate_grads(
        params, lambda item: weighted_lm_loss(model(**item[0]), item[1], item[2]), prepared)
    return loss, [ops.to_numpy(g) for g in grads]


@pytest.mark.parametrize("mode", ["per_token", "per_sample"])
def test_split_invariance(mode):
    model, samples = make_model(), make_dataset(4, min_len=3, max_len=10)
    results = [_loss_and_grads(model, samples, micro, mode) for micro in SPLITS]
    loss0, grads0 = results[0]
    for loss, grads in results[1:]:
        assert abs(loss - loss0) <= TRAIN_TOLERANCE["split_loss_rel"] * abs(loss0)
        for g, g0 in zip(grads, grads0):
            assert np.abs(g - g0).max() <= TRAIN_TOLERANCE["split_grad_rel"] * max(np.abs(g0).max(), 1e-12)


def test_default_mode_depends_on_split():
    model, samples = make_model(), make_dataset(4, min_len=3, max_len=10)
    whole, _ = _loss_and_grads(model, samples, 4, "default")
    single, _ = _loss_and_grads(model, samples, 1, "default")
    assert abs(whole - single) > 1e-3 * abs(whole)


def test_weights_by_hand():
    labels = [np.array([[-100, 5, 6, -100], [-100, -100, 7, -100]]), np.array([[-100, 1, 2, 3]])]
    batches = [{"labels": lab} for lab in labels]
    per_token = token_weights(batches, "per_token")
    assert [w.sum() for w in per_token] == pytest.approx([3 / 6, 3 / 6])
    per_sample = token_weights(batches, "per_sample")
    np.testing.assert_allclose(per_sample[0], [[1 / 6, 1 / 6, 0, 0], [0, 1 / 3, 0, 0]])
    np.testing.assert_allclose(per_sample[1], [[1 / 9, 1 / 9, 1 / 9, 0]])
    default = token_weights(batches, "default")
    np.testing.assert_allclose(default[0], [[1 / 6, 1 / 6, 0, 0], [0, 1 / 6, 0, 0]])
    packed = token_weights([{"labels": np.array([[-100, 4, 5, 8, -100, 9]]), "cu_seqlens": np.array([0, 3, 6])}],
                           "per_sample")  # label 8 opens sample 2: no target predicts it across the boundary
    np.testing.assert_allclose(packed[0], [[1 / 4, 1 / 4, 0, 0, 1 / 2, 0]])
    with pytest.raises(ValueError, match="vlm_model_loss_calculate_type"):
        token_weights(batches, "sum")
