"""Training computes logits only at supervised positions (``logits_positions``): the same loss and gradients as
the full (B, S, V) logits, from fewer output-layer rows."""
import numpy as np
import pytest

from mmx import backend, nn, ops, reference
from mmx.train.loop import model_inputs, prepare_micro_batch
from mmx.train.loss import shifted_targets, token_weights, weighted_lm_loss
from tolerances import MODEL_SAME_BACKEND_ATOL, TRAIN_TOLERANCE

SAMPLES = ("image_small", "video", "text")


def _batch(hf_dir):
    """A padded batch whose labels supervise the second half of each row's real tokens (an answer after a prompt)."""
    batch = reference.build_inputs(hf_dir, SAMPLES)
    labels = np.full_like(batch["input_ids"], -100)
    for row, length in enumerate(batch["attention_mask"].sum(-1)):
        labels[row, length // 2:length] = batch["input_ids"][row, length // 2:length]
    return dict(batch, labels=labels)


def _loss_and_grads(model, loss_fn, prepared):
    train = backend.get().train
    params = [param for _, param in train.trainable_parameters(model)]
    loss, grads = train.accumulate_grads(params, loss_fn, [prepared])
    return loss, [ops.to_numpy(grad) for grad in grads]


@pytest.mark.parametrize("family,tied", [("qwen2_vl", False), ("qwen2_5_vl", True)])
def test_selected_logits_match_full(checkpoint, family, tied):
    ckpt = checkpoint(family, tied)
    model = ckpt.build()
    batch = _batch(ckpt.hf_dir)
    weights = token_weights([batch], "per_token")[0]
    inputs, targets, selected_weights = prepare_micro_batch(model, batch, weights)
    positions = inputs["logits_positions"]
    assert positions.tolist() == np.flatnonzero(weights).tolist()
    assert 0 < len(positions) < batch["input_ids"].size / 2  # the prompt half and the padding get no logits

    with nn.inference_mode():
        full = ops.to_numpy(model(**model_inputs(model, batch)))
        selected = ops.to_numpy(model(**inputs))
    assert selected.shape == (len(positions), full.shape[-1])
    assert np.abs(selected - full.reshape(-1, full.shape[-1])[positions]).max() <= MODEL_SAME_BACKEND_ATOL

    full_item = (model_inputs(model, batch), ops.tensor(shifted_targets(batch)), ops.tensor(weights))
    loss_full, grads_full = _loss_and_grads(model, lambda item: weighted_lm_loss(model(**item[0]), *item[1:]),
                                            full_item)
    loss_sel, grads_sel = _loss_and_grads(model, lambda item: weighted_lm_loss(model(**item[0]), *item[1:]),
                                          (inputs, targets, selected_weights))
    assert abs(loss_sel - loss_full) <= TRAIN_TOLERANCE["split_loss_rel"] * abs(loss_full)
    for grad_sel, grad_full in zip(grads_sel, grads_full):
        scale = max(np.abs(grad_full).max(), 1e-12)
        assert np.abs(grad_sel - grad_full).max() <= TRAIN_TOLERANCE["split_grad_rel"] * scale


def test_nothing_supervised_keeps_one_zero_weight_position(checkpoint):
    """A micro-batch without supervised tokens still runs forward and backward (data-parallel ranks stay in step)
    and contributes nothing."""
    ckpt = checkpoint("qwen2_5_vl", True)
    model = ckpt.build()
    batch = dict(_batch(ckpt.hf_dir))
    batch["labels"] = np.full_like(batch["labels"], -100)
    inputs, targets, weights = prepare_micro_batch(model, batch, np.zeros(batch["labels"].shape, np.float32))
    assert inputs["logits_positions"].tolist() == [0] and ops.to_numpy(weights).tolist() == [0.0]
    loss, grads = _loss_and_grads(model, lambda item: weighted_lm_loss(model(**item[0]), *item[1:]),
                                  (inputs, targets, weights))
    assert loss == 0.0 and max(np.abs(grad).max() for grad in grads) == 0.0
