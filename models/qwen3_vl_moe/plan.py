"""Qwen3-VL-MoE parallel placement (format: ``models/qwen2_vl/plan.py``): Qwen3-VL's, plus the MoE layers.

The router and the stacked experts are whole on every tensor-parallel rank (expert tensor parallelism 1, Megatron's
default with expert parallelism); expert parallelism splits the stacked experts on dim 0 (``EXPERT_PARALLEL``), rank
e holding experts ``e * E / ep .. (e + 1) * E / ep - 1`` renumbered from 0.
"""
from mmx.models.qwen3_vl.plan import FULLY_SHARD_UNITS, LLM_LAYER, PIPELINE, TENSOR_PARALLEL as _QWEN3_VL  # noqa: F401
from mmx.models.qwen3_vl.plan import TP_DIVIDES  # noqa: F401

MOE = LLM_LAYER + "mlp."

TENSOR_PARALLEL = {
    **_QWEN3_VL,
    MOE + "router.weight": "replicate",
    MOE + "experts.linear_fc1.weight": "replicate",
    MOE + "experts.linear_fc2.weight": "replicate",
}

# Stacked-expert tensors → the dimension expert parallelism splits (the expert index).
EXPERT_PARALLEL = {MOE + "experts.linear_fc1.weight": 0, MOE + "experts.linear_fc2.weight": 0}
