"""Qwen3-VL-MoE's routing and load-balancing loss against transformers 5.23 and against a hand computation from the
raw router logits (the field once shipped the loss computed on softmax(softmax(logits)), transformers#45120)."""
import numpy as np
import pytest

from mmx import models, nn, ops, reference
from tolerances import MODEL_GRAD_RTOL, MODEL_LOGITS_ATOL

from model_helpers import model_inputs


def _hand_aux(router_logits, top_k, attention_mask, softmax_twice=False):
    """load_balancing_loss_func by hand in float64: layer-summed top-k counts and probabilities over real tokens."""
    mask = attention_mask.reshape(-1).astype(np.float64)
    experts = router_logits[0].shape[-1]
    counts, probs_sum = np.zeros(experts), np.zeros(experts)
    for logits in router_logits:
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if softmax_twice:
            probs = np.exp(probs) / np.exp(probs).sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
        counts += np.bincount(top.reshape(-1), weights=np.repeat(mask, top_k), minlength=experts)
        probs_sum += (probs * mask[:, None]).sum(0)
    rows = mask.sum() * len(router_logits)
    return experts * float(np.sum(counts / rows * probs_sum / rows))


@pytest.mark.parametrize("tied", [False, True])
def test_aux_loss_matches_transformers_and_the_hand_computation(checkpoint, tied):
    import torch

    ckpt = checkpoint("qwen3_vl_moe", tied)
    inputs = reference.build_inputs(ckpt.hf_dir, padding_side="left" if tied else "right", with_labels=True)
    assert (inputs["attention_mask"] == 0).any()
    hf = reference._hf_model(ckpt.hf_dir)
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()},
                 output_router_logits=True)
    raw = [logits.float().numpy().astype(np.float64) for logits in out.router_logits]
    config = models.config_from_hf(ckpt.hf_dir).text
    assert len(raw) == len(config.moe_layers) == 1 and config.moe_layers == (1,)   # layer 0 is dense
    hand = _hand_aux(raw, config.num_experts_per_tok, inputs["attention_mask"])
    assert abs(float(out.aux_loss) - hand) <= 1e-6 * hand
    # the double-softmax bug would give another number: the test can tell
    assert abs(_hand_aux(raw, config.num_experts_per_tok, inputs["attention_mask"], softmax_twice=True) - hand) \
        > 1e-3 * hand
    with nn.inference_mode():
        logits, aux = ckpt.build()(**model_inputs(inputs), return_aux_loss=True)
    assert abs(float(ops.to_numpy(aux)) - hand) <= MODEL_GRAD_RTOL * hand
    real = inputs["attention_mask"].astype(bool)
    assert np.abs(ops.to_numpy(logits) - out.logits.numpy())[real].max() <= MODEL_LOGITS_ATOL
    # the random router spreads the batch's tokens over every expert
    top = np.argsort(-raw[0], axis=-1)[:, :config.num_experts_per_tok][inputs["attention_mask"].reshape(-1) == 1]
    assert set(np.unique(top)) == set(range(config.num_experts))
