"""GLM-4.5V parallel placement (format: ``models/qwen2_vl/plan.py``): GLM-4.1V's vision rules and pipeline rule
(``vision_on_first_stage``) with GLM-4.5V's LLM.

LLM: q/k/v with biases split by ``qkv``, ``linear_proj`` row parallel, the dense layers' and the shared expert's
[gate; up] by ``gate_up``. As in Qwen3-VL-MoE, the router (with its correction bias) and the stacked experts are
whole on every tensor-parallel rank; expert parallelism splits the stacked experts on dim 0 (``EXPERT_PARALLEL``).
"""
from mmx.models.glm4v.plan import FULLY_SHARD_UNITS, LLM_LAYER, PIPELINE, TP_DIVIDES  # noqa: F401
from mmx.models.glm4v.plan import TENSOR_PARALLEL as _GLM4V

MLP = LLM_LAYER + "mlp."

TENSOR_PARALLEL = {
    **{name: rule for name, rule in _GLM4V.items()
       if not name.startswith((LLM_LAYER + "post_self_attn_layernorm", LLM_LAYER + "post_mlp_layernorm"))},
    MLP + "router.weight": "replicate",
    MLP + "router.e_score_correction_bias": "replicate",
    MLP + "experts.linear_fc1.weight": "replicate",
    MLP + "experts.linear_fc2.weight": "replicate",
    MLP + "shared_experts.linear_fc1.weight": "gate_up",
    MLP + "shared_experts.linear_fc2.weight": "row",
}

# Stacked-expert tensors → the dimension expert parallelism splits (the expert index).
EXPERT_PARALLEL = {MLP + "experts.linear_fc1.weight": 0, MLP + "experts.linear_fc2.weight": 0}
