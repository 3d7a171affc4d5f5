"""InternVL3 parallel placement as data (format: ``models/qwen2_vl/plan.py``).

- Vision attention: ``linear_qkv`` rows are [q; k; v] (MindSpeed-MM keeps the original ``attn.qkv``), so it splits
  by ``qkv_blocks`` (each third chunked by heads, rank r holds [q_r; k_r; v_r]); ``linear_proj`` is row parallel.
  The 6B tower's qk-norms run over the full width (all heads) before the split, so a tensor-parallel rank cannot
  compute them from its heads alone: the weights stay replicated (a tensor-parallel run has to gather q / k
  before them). Vision MLP ``fc1`` column, ``fc2`` row parallel.
- Projector: ``linear_fc1`` column, ``linear_fc2`` row parallel; the LayerNorm before them replicated.
- LLM: as Qwen2 (q/k/v with biases, ``qkv``; fused ``gate_up``).

Heads that do not divide the TP size (InternViT-6B has 25): **refused** before any tensor is read (``TP_DIVIDES``
lists ``vision_heads``; the error names the count and the sizes that work). MindSpeed-MM splits such heads unevenly
(``UnalignedRowSplit``); mmx's shard rules (``mmx/checkpoint/shard.py``) give every rank equal heads, so
InternVL3-78B is converted with TP 1 (or 5, which divides 25) and pipeline stages instead.

Pipeline: vision first, then LLM. The first stage holds the vision embeddings (CLS, patch, position table) and,
like MindSpeed-MM's vision schema ends, the projector; rule ``vision_on_first_stage``: every vision layer on stage 0.
"""
from mmx.models.qwen2_vl.plan import (EXPERT_PARALLEL, LLM_LAYER, TP_DIVIDES)  # noqa: F401
from mmx.models.qwen2_vl.plan import PIPELINE as _QWEN2_VL_PIPELINE

VISION, LAYER, PROJECTOR = "image_encoder.encoder.", "image_encoder.encoder.encoder.layers.{i}.", "image_encoder.projector."

TENSOR_PARALLEL = {
    VISION + "embeddings.class_embedding": "replicate",
    VISION + "embeddings.patch_embedding.weight": "replicate",
    VISION + "embeddings.patch_embedding.bias": "replicate",
    VISION + "embeddings.position_embedding": "replicate",
    LAYER + "input_layernorm.weight": "replicate",
    LAYER + "input_layernorm.bias": "replicate",
    LAYER + "self_attention.linear_qkv.weight": "qkv_blocks",
    LAYER + "self_attention.linear_qkv.bias": "qkv_blocks",
    LAYER + "self_attention.q_layernorm.weight": "replicate",
    LAYER + "self_attention.k_layernorm.weight": "replicate",
    LAYER + "self_attention.linear_proj.weight": "row",
    LAYER + "self_attention.linear_proj.bias": "replicate",
    LAYER + "ls1": "replicate",
    LAYER + "ls2": "replicate",
    LAYER + "pre_mlp_layernorm.weight": "replicate",
    LAYER + "pre_mlp_layernorm.bias": "replicate",
    LAYER + "mlp.linear_fc1.weight": "column",
    LAYER + "mlp.linear_fc1.bias": "column",
    LAYER + "mlp.linear_fc2.weight": "row",
    LAYER + "mlp.linear_fc2.bias": "replicate",
    PROJECTOR + "norm.weight": "replicate",
    PROJECTOR + "norm.bias": "replicate",
    PROJECTOR + "linear_fc1.weight": "column",
    PROJECTOR + "linear_fc1.bias": "column",
    PROJECTOR + "linear_fc2.weight": "row",
    PROJECTOR + "linear_fc2.bias": "replicate",
    "text_decoder.embedding.word_embeddings.weight": "vocab",
    LLM_LAYER + "input_layernorm.weight": "replicate",
    LLM_LAYER + "self_attention.linear_qkv.weight": "qkv",
    LLM_LAYER + "self_attention.linear_qkv.bias": "qkv",
    LLM_LAYER + "self_attention.linear_proj.weight": "row",
    LLM_LAYER + "pre_mlp_layernorm.weight": "replicate",
    LLM_LAYER + "mlp.linear_fc1.weight": "gate_up",
    LLM_LAYER + "mlp.linear_fc2.weight": "row",
    "text_decoder.decoder.final_layernorm.weight": "replicate",
    "text_decoder.output_layer.weight": "vocab",
}

PIPELINE = {
    **_QWEN2_VL_PIPELINE,
    "vision_layer": LAYER,
    "first_stage": (VISION + "embeddings.", PROJECTOR, "text_decoder.embedding."),
    "rules": ("vision_on_first_stage",),
}

FULLY_SHARD_UNITS = (LAYER, LLM_LAYER)
