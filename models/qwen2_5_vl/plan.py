"""Qwen2.5-VL parallel placement (format: ``models/qwen2_vl/plan.py``): the same as Qwen2-VL except the gated
vision MLP, whose fused ``linear_fc1`` (gate and up) splits like the LLM's."""
from mmx.models.qwen2_vl.plan import (EXPERT_PARALLEL, FULLY_SHARD_UNITS, PIPELINE, TP_DIVIDES,  # noqa: F401
                                      VISION_BLOCK)
from mmx.models.qwen2_vl.plan import TENSOR_PARALLEL as _QWEN2_VL

TENSOR_PARALLEL = {**_QWEN2_VL,
                   VISION_BLOCK + "mlp.linear_fc1.weight": "gate_up",
                   VISION_BLOCK + "mlp.linear_fc1.bias": "gate_up"}
