"""Qwen3-VL parallel placement (format: ``models/qwen2_vl/plan.py``).

Beyond Qwen2-VL: the patch-conv bias and the learned position table are replicated on the first stage; each
deepstack merger splits like the projector and lives with its vision block (so on that block's stage); the LLM's
per-head q/k norms are replicated and it has no q/k/v biases. Pipeline rule ``deepstack_on_vision_stage``: the LLM
layers that receive deepstack features (0 .. levels-1) must sit on the stage where the vision tower finishes.
"""
from mmx.models.qwen2_vl.plan import EXPERT_PARALLEL, FULLY_SHARD_UNITS, LLM_LAYER, TP_DIVIDES  # noqa: F401
from mmx.models.qwen2_vl.plan import PIPELINE as _QWEN2_VL_PIPELINE
from mmx.models.qwen2_vl.plan import TENSOR_PARALLEL as _QWEN2_VL
from mmx.models.qwen2_vl.plan import VISION_BLOCK

DEEPSTACK = VISION_BLOCK + "deepstack_layer."

TENSOR_PARALLEL = {
    **{name: rule for name, rule in _QWEN2_VL.items() if name != LLM_LAYER + "self_attention.linear_qkv.bias"},
    "image_encoder.encoder.patch_embed.proj.bias": "replicate",
    "image_encoder.encoder.pos_embed.weight": "replicate",
    DEEPSTACK + "layernorm.weight": "replicate",
    DEEPSTACK + "layernorm.bias": "replicate",
    DEEPSTACK + "encoder.linear_fc1.weight": "column",
    DEEPSTACK + "encoder.linear_fc1.bias": "column",
    DEEPSTACK + "encoder.linear_fc2.weight": "row",
    DEEPSTACK + "encoder.linear_fc2.bias": "replicate",
    LLM_LAYER + "self_attention.q_layernorm.weight": "replicate",
    LLM_LAYER + "self_attention.k_layernorm.weight": "replicate",
}

PIPELINE = {
    **_QWEN2_VL_PIPELINE,
    "first_stage": _QWEN2_VL_PIPELINE["first_stage"] + ("image_encoder.encoder.pos_embed.",),
    "rules": ("deepstack_on_vision_stage",),
}
