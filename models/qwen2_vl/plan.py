"""Qwen2-VL parallel placement as data: how each mm tensor splits over tensor-parallel ranks, which pipeline
stage holds it, and which model numbers the tensor-parallel size must divide. Read by mmx.checkpoint (resharding)
and by the backends' parallel code; the converter itself holds no per-model rules.

Split rules (``mmx/checkpoint/shard.py``): ``replicate`` (every rank holds it whole), ``column`` (dim 0),
``row`` (dim 1), ``vocab`` (dim 0 over the vocabulary), ``qkv`` (dim 0 of the per-KV-group interleaved
``linear_qkv``: each rank gets whole KV groups), ``gate_up`` (gate and up halves each split on dim 0, a rank holds
``cat(gate_part, up_part)``). Row-parallel biases are replicated: they are added after the all-reduce.
"""

VISION_BLOCK = "image_encoder.encoder.blocks.layers.{i}."
LLM_LAYER = "text_decoder.decoder.layers.{j}."

TENSOR_PARALLEL = {
    "image_encoder.encoder.patch_embed.proj.weight": "replicate",
    VISION_BLOCK + "input_layernorm.weight": "replicate",
    VISION_BLOCK + "input_layernorm.bias": "replicate",
    VISION_BLOCK + "self_attention.linear_qkv.weight": "qkv",
    VISION_BLOCK + "self_attention.linear_qkv.bias": "qkv",
    VISION_BLOCK + "self_attention.linear_proj.weight": "row",
    VISION_BLOCK + "self_attention.linear_proj.bias": "replicate",
    VISION_BLOCK + "pre_mlp_layernorm.weight": "replicate",
    VISION_BLOCK + "pre_mlp_layernorm.bias": "replicate",
    VISION_BLOCK + "mlp.linear_fc1.weight": "column",
    VISION_BLOCK + "mlp.linear_fc1.bias": "column",
    VISION_BLOCK + "mlp.linear_fc2.weight": "row",
    VISION_BLOCK + "mlp.linear_fc2.bias": "replicate",
    "image_encoder.projector.layernorm.weight": "replicate",
    "image_encoder.projector.layernorm.bias": "replicate",
    "image_encoder.projector.encoder.linear_fc1.weight": "column",
    "image_encoder.projector.encoder.linear_fc1.bias": "column",
    "image_encoder.projector.encoder.linear_fc2.weight": "row",
    "image_encoder.projector.encoder.linear_fc2.bias": "replicate",
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

# The guides' pipeline rule (mmx/parallel.py): layer tensors go to the stage holding their global index; the
# first stage holds the first_stage prefixes, the last the last_stage ones. With tied embeddings a last stage that
# is not also the first holds a copy of the embedding under the output layer's name (Megatron's pipeline stages):
# tied_copy = (the embedding's name, the name of its copy on the last stage).
PIPELINE = {
    "vision_layer": VISION_BLOCK,
    "llm_layer": LLM_LAYER,
    "first_stage": ("image_encoder.encoder.patch_embed.", "image_encoder.projector.", "text_decoder.embedding."),
    "last_stage": ("text_decoder.decoder.final_layernorm.", "text_decoder.output_layer."),
    "tied_copy": ("text_decoder.embedding.word_embeddings.weight", "text_decoder.output_layer.weight"),
}

# Fully sharded data parallel (training.data_parallel: fully_shard): each module matching one of these name patterns
# ({i} / {j}: any index) is its own unit, gathered whole only while it computes; the root unit holds the rest
# (patch embedding, projector, embedding, final norm, output layer).
FULLY_SHARD_UNITS = (VISION_BLOCK, LLM_LAYER)

# Numbers (keys of hf_names.dimensions) the tensor-parallel size must divide, with what they are.
TP_DIVIDES = {"vision_heads": "vision attention heads", "llm_heads": "LLM attention heads",
              "llm_kv_heads": "LLM key/value heads", "vocab_size": "vocabulary size"}
# Stacked-expert tensors split over expert-parallel ranks; Qwen2-VL has none.
EXPERT_PARALLEL = {}
