"""The sparse MoE block of Qwen3-VL-MoE's LLM and its load-balancing loss, written against mmx.ops.

Mirrors ``Qwen3VLMoeTextSparseMoeBlock`` / ``Qwen3VLMoeTextTopKRouter`` / ``Qwen3VLMoeTextExperts`` and
``load_balancing_loss_func`` in transformers' ``models/qwen3_vl_moe/modeling_qwen3_vl_moe.py``::

    SparseMoeBlock (state-dict prefix ...layers.{j}.mlp.)
    ├── router                  Linear(C → E, no bias): logits in the activation dtype
    ├── ops.router_topk         softmax in float32 → top-k → weights renormalised to sum 1 (always, as 5.23 does)
    └── experts                 ops.moe_experts: permute → grouped GEMM (linear_fc1 (E, C, 2F) = [gate | up]) →
                                SwiGLU → grouped GEMM (linear_fc2 (E, F, C)) → unpermute with the weights

The expert kernel is chosen by name in the backend (grouped GEMM, the loop reference, torch_npu's fused path); model
code never loops over experts.
"""
import numpy as np

from mmx import nn, ops
from mmx.nn.layers import Linear


class StackedExperts(nn.Module):
    """All experts of one layer as two stacked tensors (the mm layout grouped GEMM wants, docs/checkpoint-layout.md):
    ``linear_fc1.weight`` (E, C, 2F) with the gate in [..., :F] and up in [..., F:], ``linear_fc2.weight`` (E, F, C)."""

    def __init__(self, num_experts, hidden_size, intermediate_size):
        super().__init__()
        self.linear_fc1 = _Stacked((num_experts, hidden_size, 2 * intermediate_size))
        self.linear_fc2 = _Stacked((num_experts, intermediate_size, hidden_size))

    parallel = None   # mmx.expert_parallel.ExpertParallel when the experts are split over ranks (EP training)

    def forward(self, x, weights, indices):
        """x (T, C), weights/indices (T, K) → (T, C)."""
        if self.parallel is not None:   # this rank holds experts E/EP of them; tokens are dispatched to their ranks
            return self.parallel(x, weights, indices, self.linear_fc1.weight, self.linear_fc2.weight)
        return ops.moe_experts(x, weights, indices, self.linear_fc1.weight, self.linear_fc2.weight)


class _Stacked(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(ops.zeros(shape))


class SparseMoeBlock(nn.Module):
    """Top-k routed SwiGLU experts: x (B, S, C) → (y (B, S, C), router logits (B*S, E) for the load-balancing loss)."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = StackedExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)

    def forward(self, x):
        batch, length, width = x.shape
        flat = ops.reshape(x, (batch * length, width))
        logits = self.router(flat)
        weights, indices = ops.router_topk(logits, self.top_k, normalize=True)
        # HF casts the renormalised float32 weights to the activation dtype before weighting the experts.
        out = self.experts(flat, ops.cast(weights, x.dtype), indices)
        return ops.reshape(out, (batch, length, width)), logits


class SigmoidRouter(nn.Module):
    """GLM-4.5V's (DeepSeek-V3's) router, HF ``Glm4vMoeTextTopkRouter``, all in float32: x (T, C) →
    (weights (T, K) float32, indices (T, K) int64, logits (T, E) float32).

    scores = sigmoid(x W^T); the choice adds ``e_score_correction_bias`` (E,) (float32, frozen: a buffer in HF,
    used for the choice only), keeps the ``topk_groups`` of ``num_groups`` groups with the largest top-2 sums and
    takes the top ``k`` experts there (ops.topk_indices: ties go to the lower index, the same on every backend);
    the weights are the chosen experts' unbiased scores, / (sum + 1e-20) when ``norm_topk_prob``, times
    ``routed_scaling_factor``.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(ops.zeros((config.num_experts, config.hidden_size)))
        self.e_score_correction_bias = nn.Parameter(ops.zeros((config.num_experts,), ops.float32))
        nn.set_requires_grad(self.e_score_correction_bias, False)

    def choose(self, scores):
        """scores (T, E) float32 → the chosen experts (T, K) int64 (no gradient)."""
        config = self.config
        choice = ops.stop_gradient(scores) + ops.cast(self.e_score_correction_bias, ops.float32)
        groups, per_group = config.num_expert_groups, config.num_experts // config.num_expert_groups
        if config.topk_groups < groups:     # keeping every group is a no-op (GLM-4.5V: 1 of 1)
            tokens = choice.shape[0]
            grouped = ops.reshape(choice, (tokens, groups, per_group))
            group_scores = ops.sum(ops.topk(grouped, 2, dim=-1)[0], dim=-1)                  # (T, G)
            kept = ops.topk_indices(group_scores, config.topk_groups)                         # (T, topk_groups)
            mask = ops.scatter(ops.zeros((tokens, groups), ops.float32), 1, kept,
                               ops.ones((tokens, config.topk_groups), ops.float32))
            mask = ops.reshape(ops.expand(ops.unsqueeze(mask, -1), (tokens, groups, per_group)),
                               (tokens, config.num_experts))
            choice = ops.where(mask > 0.5, choice, float("-inf"))
        return ops.topk_indices(choice, config.num_experts_per_tok)

    def forward(self, x):
        logits = ops.router_linear(x, self.weight)
        scores = ops.sigmoid(logits)
        indices = self.choose(scores)
        weights = ops.gather(scores, 1, indices)
        if self.config.norm_topk_prob:
            weights = weights / (ops.sum(weights, dim=-1, keepdim=True) + 1e-20)
        return weights * self.config.routed_scaling_factor, indices, logits


class SharedExpertMoeBlock(nn.Module):
    """GLM-4.5V's MoE MLP (HF ``Glm4vMoeTextMoE``): routed experts (float32 weights: each token's weighted sum runs
    in float32, then the activation dtype) + a shared SwiGLU expert (``shared_experts``, fused [gate | up]).
    x (B, S, C) → (y (B, S, C), router logits (B*S, E) float32)."""

    def __init__(self, config):
        super().__init__()
        from mmx.models.common.text import GatedMLP

        self.router = SigmoidRouter(config)
        self.experts = StackedExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        self.shared_experts = GatedMLP(config.hidden_size, config.shared_expert_intermediate_size, bias=False)

    def forward(self, x):
        batch, length, width = x.shape
        flat = ops.reshape(x, (batch * length, width))
        weights, indices, logits = self.router(flat)
        out = ops.reshape(self.experts(flat, weights, indices), (batch, length, width))
        return out + self.shared_experts(x), logits


def moe_block(config):
    """The MoE MLP of ``config.moe_router``: "softmax" → SparseMoeBlock, "sigmoid" → SharedExpertMoeBlock."""
    if config.moe_router == "sigmoid":
        return SharedExpertMoeBlock(config)
    return SparseMoeBlock(config)


def load_balancing_loss(router_logits, num_experts, top_k, attention_mask=None):
    """The Switch load-balancing loss of transformers 5.23 (``load_balancing_loss_func``) over all MoE layers.

    router_logits: [(T, E)] per MoE layer (the raw router outputs, T = B * S); attention_mask (B, S) numpy or None
    (1 = real token; padding counts for nothing). Counts and probabilities are summed over the layers and divided by
    layers × real tokens each, then ``E * sum_e(count_e * prob_e)``: the per-expert token counts are constants (no
    gradient flows through top-k), so they are computed on the host. → scalar float32 tensor.
    """
    mask = None if attention_mask is None else np.asarray(attention_mask, np.float32).reshape(-1)
    counts = np.zeros(num_experts, np.float64)
    prob_sum, rows = None, 0.0
    for logits in router_logits:
        probs = ops.softmax(ops.cast(logits, ops.float32), dim=-1)
        _, selected = ops.topk(probs, top_k, dim=-1)
        chosen = ops.to_numpy(selected)
        weight = np.ones(chosen.shape[0], np.float32) if mask is None else mask
        counts += np.bincount(chosen.reshape(-1), weights=np.repeat(weight, top_k), minlength=num_experts)
        weighted = probs if mask is None else probs * ops.unsqueeze(ops.tensor(mask), -1)
        layer_sum = ops.sum(weighted, dim=0)
        prob_sum = layer_sum if prob_sum is None else prob_sum + layer_sum
        rows += float(weight.sum())
    if prob_sum is None:
        return ops.zeros((), ops.float32)
    tokens_per_expert = ops.tensor((counts / rows).astype(np.float32))
    return ops.sum(tokens_per_expert * (prob_sum / rows)) * float(num_experts)
