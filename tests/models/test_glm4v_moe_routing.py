"""GLM-4.5V's grouped sigmoid routing against transformers 5.23's ``Glm4vMoeTextTopkRouter``: the chosen experts
for every token (planted ties included) and their weights, with the default routing (one group, scale 1) and a
grouped variant (4 groups of 2 experts, 2 kept, routed_scaling_factor 2.5); the grouped variant's logits."""
import numpy as np
import pytest

from mmx import nn, ops, reference
from tolerances import MODEL_LOGITS_ATOL

from model_helpers import Checkpoint, model_inputs

GROUPED = dict(text_n_group=4, text_topk_group=2, text_routed_scaling_factor=2.5)
_cache = {}


def _checkpoint(tmp_path_factory, grouped):
    if grouped not in _cache:
        root = tmp_path_factory.mktemp(f"glm4v_moe_grouped_{grouped}")
        _cache[grouped] = Checkpoint(root, "glm4v_moe", False, **(GROUPED if grouped else {}))
    return _cache[grouped]


def _lowest_index_rule(scores, bias, top_k, groups, keep):
    """The choice by hand in float64 from transformers' scores: groups by their top-2 sums, then the top k, ties
    to the lower index (stable sorts)."""
    choice = scores.astype(np.float64) + bias
    tokens, experts = choice.shape
    grouped = choice.reshape(tokens, groups, experts // groups)
    group_scores = -np.sort(-grouped, axis=-1)[..., :2].sum(-1)
    kept = np.argsort(-group_scores, axis=-1, kind="stable")[:, :keep]
    mask = np.zeros((tokens, groups), bool)
    np.put_along_axis(mask, kept, True, axis=-1)
    choice = np.where(np.repeat(mask, experts // groups, axis=-1), choice, -np.inf)
    return np.argsort(-choice, axis=-1, kind="stable")[:, :top_k]


def _route(ckpt, hidden, tie=None):
    """(mmx weights, mmx indices, HF weights, HF indices, HF scores) for layer 1's router on ``hidden`` (T, C);
    ``tie`` = (a, b): expert b's router row and bias copied from expert a in both models (every token ties)."""
    import torch

    model = ckpt.build()
    router = model.text_decoder.decoder.layers["1"].mlp.router
    hf_router = reference._hf_model(ckpt.hf_dir).model.language_model.layers[1].mlp.gate
    weight = ckpt.tensors["text_decoder.decoder.layers.1.mlp.router.weight"].copy()
    bias = ckpt.tensors["text_decoder.decoder.layers.1.mlp.router.e_score_correction_bias"].copy()
    if tie is not None:
        weight[tie[1]], bias[tie[1]] = weight[tie[0]], bias[tie[0]]
    nn.load_state_dict(router, {"weight": ops.tensor(weight), "e_score_correction_bias": ops.tensor(bias)},
                       strict=False)
    with torch.no_grad():
        saved = hf_router.weight.clone(), hf_router.e_score_correction_bias.clone()
        hf_router.weight.copy_(torch.from_numpy(weight))
        hf_router.e_score_correction_bias.copy_(torch.from_numpy(bias))
        logits, hf_weights, hf_indices = hf_router(torch.from_numpy(hidden))
        hf_router.weight.copy_(saved[0])
        hf_router.e_score_correction_bias.copy_(saved[1])
    with nn.inference_mode():
        weights, indices, _ = router(ops.tensor(hidden))
    return (ops.to_numpy(weights), ops.to_numpy(indices), hf_weights.numpy(), hf_indices.numpy(),
            torch.sigmoid(logits).numpy(), bias)


def _by_expert(weights, indices, experts):
    """(T, E) with each token's weight at its chosen experts, 0 elsewhere (slot order does not matter)."""
    out = np.zeros((len(indices), experts))
    np.put_along_axis(out, indices, weights, axis=-1)
    return out


@pytest.mark.parametrize("grouped", [False, True], ids=["one_group", "grouped"])
def test_chosen_experts_and_weights_match_transformers(tmp_path_factory, grouped):
    ckpt = _checkpoint(tmp_path_factory, grouped)
    hidden = np.random.default_rng(1).standard_normal((512, 64)).astype(np.float32) * 3
    weights, indices, hf_weights, hf_indices, _, _ = _route(ckpt, hidden)
    assert indices.dtype == np.int64 and indices.shape == (512, 2)
    np.testing.assert_array_equal(np.sort(indices, -1), np.sort(hf_indices, -1))        # every token
    assert np.abs(_by_expert(weights, indices, 8) - _by_expert(hf_weights, hf_indices, 8)).max() <= 1e-6
    assert np.abs(weights.sum(-1) - (2.5 if grouped else 1.0)).max() <= 1e-5            # normalised, scaled
    if grouped:    # the group mask really decides: the unmasked top-2 differs for some tokens
        _, _, _, _, scores, bias = _route(ckpt, hidden)
        free = np.sort(np.argsort(-(scores + bias), -1, kind="stable")[:, :2], -1)
        assert (free != np.sort(indices, -1)).any(-1).sum() > 20
    assert len(np.unique(indices)) == 8                                                  # every expert used


@pytest.mark.parametrize("grouped", [False, True], ids=["one_group", "grouped"])
def test_planted_ties_go_to_the_lower_expert_index(tmp_path_factory, grouped):
    """Experts 2 and 3 (one group when grouped) get the same router row and bias: every token's choice scores tie.
    mmx gives the lower index on both backends; torch.topk's own tie order is its kernel's (on CPU it picks either),
    so transformers is matched on every token whose choice the tie does not decide, and the tokens it does decide
    are exactly those where transformers took expert 3 instead of 2 (the rule: HF's scores, stable sorts)."""
    ckpt = _checkpoint(tmp_path_factory, grouped)
    hidden = np.random.default_rng(2).standard_normal((512, 64)).astype(np.float32) * 3
    weights, indices, hf_weights, hf_indices, scores, bias = _route(ckpt, hidden, tie=(2, 3))
    groups, keep = (4, 2) if grouped else (1, 1)
    rule = _lowest_index_rule(scores, bias, 2, groups, keep)
    np.testing.assert_array_equal(np.sort(indices, -1), np.sort(rule, -1))
    mine, theirs = np.sort(indices, -1), np.sort(hf_indices, -1)
    differ = (mine != theirs).any(-1)
    straddle = np.array([(2 in r) != (3 in r) for r in rule])     # the tie sits on the top-k boundary
    assert straddle.sum() > 10                                         # the test plants real boundary ties
    assert not differ[~straddle].any()
    for token in np.nonzero(differ)[0]:                                 # HF picked 3 where the rule picks 2
        assert set(mine[token]) - set(theirs[token]) == {2} and set(theirs[token]) - set(mine[token]) == {3}
    agree = ~differ
    assert np.abs(_by_expert(weights, indices, 8)[agree] - _by_expert(hf_weights, hf_indices, 8)[agree]).max() \
        <= 1e-6


def test_grouped_variant_logits_match_transformers(tmp_path_factory):
    ckpt = _checkpoint(tmp_path_factory, True)
    inputs = reference.build_inputs(ckpt.hf_dir)
    expected = reference.hf_logits(ckpt.hf_dir, inputs)
    with nn.inference_mode():
        logits = ops.to_numpy(ckpt.build()(**model_inputs(inputs)))
    real = inputs["attention_mask"].astype(bool)
    assert np.abs(logits - expected)[real].max() <= MODEL_LOGITS_ATOL
