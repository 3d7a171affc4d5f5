"""The trainer's loss through the model's fused output layer + cross entropy (``loss_targets``:
ops.linear_cross_entropy in row chunks, no float32 (N, V) logits) equals the plain path (logits at the supervised
positions → mmx.train.loss.weighted_lm_loss): loss and every parameter's gradient, tied and untied output layers,
on the current backend."""
import numpy as np
import pytest

from mmx import backend, models
from mmx.tiny import make_tiny_checkpoint
from mmx.train.finetune import read_weights
from mmx.train.loop import lm_loss, prepare_micro_batch
from mmx.train.loss import token_weights, weighted_lm_loss
from tolerances import TRAIN_TOLERANCE
from test_step_flops import _batch


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_fused_loss_and_gradients_equal_the_logits_path(tmp_path, tied):
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen2_5_vl", tied=tied)
    model = models.build(hf_dir)
    models.load_mm_state(model, read_weights(hf_dir)[1])
    train = backend.get().train
    params = [param for _, param in train.trainable_parameters(model)]
    batch = _batch(model, packed=False)
    prepared = prepare_micro_batch(model, batch, token_weights([batch], "per_token")[0])

    def plain(item):
        return weighted_lm_loss(model(**item[0]), item[1], item[2])

    want_loss, want = train.accumulate_grads(params, plain, [prepared])
    got_loss, got = train.accumulate_grads(params, lambda item: lm_loss(model, *item), [prepared])
    assert abs(got_loss - want_loss) / abs(want_loss) <= TRAIN_TOLERANCE["fused_loss_rel"]
    worst = max(float(np.abs(backend.get().ops.to_numpy(g) - backend.get().ops.to_numpy(w)).max() /
                      max(np.abs(backend.get().ops.to_numpy(w)).max(), 1e-12)) for g, w in zip(got, want))
    assert worst <= TRAIN_TOLERANCE["fused_grad_rel"], worst
