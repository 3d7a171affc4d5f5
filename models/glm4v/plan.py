"""GLM-4.1V parallel placement as data (format: ``models/qwen2_vl/plan.py``). MindSpeed-MM's GLM converter has no
tensor-parallel table (``glm_tp_patterns = {}``); this one follows Megatron's column → row pairs:

- vision attention: ``qkv`` keeps HF's [q; k; v] rows, so it splits by ``qkv_blocks`` (each third chunked by heads,
  rank r holds [q_r; k_r; v_r]); ``proj`` is row parallel. Vision MLP ``linear_fc1`` = [gate; up] splits ``gate_up``.
- ``downsample`` (a Conv2d, weight (C_out, C, 2, 2)) is column parallel over its output channels and the
  projector's ``proj`` row parallel over them (its all-reduced output feeds the replicated LayerNorm); the
  projector's ``gate_proj`` / ``up_proj`` are column and ``down_proj`` row parallel.
- LLM: as Qwen2 (q/k/v with biases, ``qkv``; fused ``gate_up``), the sandwich norms replicated.

Pipeline: vision first, then LLM (the guides' ``vit_pp_layers 24,0,0,0`` / ``llm_pp_layers 5,12,12,11``). The first
stage holds the patch embedding, post-conv norm and position table and, like MindSpeed-MM's vision stage ends
(``glm_vision_schema``), the final vision norm, downsample and projector; rule ``vision_on_first_stage``: every
vision block sits on stage 0, so the vision tower starts and ends there.
"""
from mmx.models.qwen2_vl.plan import (EXPERT_PARALLEL, FULLY_SHARD_UNITS, LLM_LAYER, TP_DIVIDES,  # noqa: F401
                                      VISION_BLOCK)
from mmx.models.qwen2_vl.plan import PIPELINE as _QWEN2_VL_PIPELINE

VISION, PROJECTOR = "image_encoder.encoder.", "image_encoder.projector."

TENSOR_PARALLEL = {
    VISION + "patch_embed.proj.weight": "replicate",
    VISION + "patch_embed.proj.bias": "replicate",
    VISION + "post_conv_layernorm.weight": "replicate",
    VISION + "embeddings.position_embedding.weight": "replicate",
    VISION_BLOCK + "input_layernorm.weight": "replicate",
    VISION_BLOCK + "self_attention.qkv.weight": "qkv_blocks",
    VISION_BLOCK + "self_attention.proj.weight": "row",
    VISION_BLOCK + "pre_mlp_layernorm.weight": "replicate",
    VISION_BLOCK + "mlp.linear_fc1.weight": "gate_up",
    VISION_BLOCK + "mlp.linear_fc2.weight": "row",
    VISION + "blocks.final_layernorm.weight": "replicate",
    VISION + "downsample.weight": "column",
    VISION + "downsample.bias": "column",
    PROJECTOR + "proj.weight": "row",
    PROJECTOR + "post_projection_norm.weight": "replicate",
    PROJECTOR + "post_projection_norm.bias": "replicate",
    PROJECTOR + "gate_proj.weight": "column",
    PROJECTOR + "up_proj.weight": "column",
    PROJECTOR + "down_proj.weight": "row",
    "text_decoder.embedding.word_embeddings.weight": "vocab",
    LLM_LAYER + "input_layernorm.weight": "replicate",
    LLM_LAYER + "self_attention.linear_qkv.weight": "qkv",
    LLM_LAYER + "self_attention.linear_qkv.bias": "qkv",
    LLM_LAYER + "self_attention.linear_proj.weight": "row",
    LLM_LAYER + "post_self_attn_layernorm.weight": "replicate",
    LLM_LAYER + "pre_mlp_layernorm.weight": "replicate",
    LLM_LAYER + "mlp.linear_fc1.weight": "gate_up",
    LLM_LAYER + "mlp.linear_fc2.weight": "row",
    LLM_LAYER + "post_mlp_layernorm.weight": "replicate",
    "text_decoder.decoder.final_layernorm.weight": "replicate",
    "text_decoder.output_layer.weight": "vocab",
}

PIPELINE = {
    **_QWEN2_VL_PIPELINE,
    "first_stage": (VISION + "patch_embed.", VISION + "post_conv_layernorm.", VISION + "embeddings.",
                    VISION + "blocks.final_layernorm.", VISION + "downsample.", PROJECTOR, "text_decoder.embedding."),
    "rules": ("vision_on_first_stage",),
}
