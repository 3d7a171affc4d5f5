"""GLM-4.1V: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``, whose pieces it reuses).

The mm names are those of MindSpeed-MM's GLM converter (``checkpoint/vlm_model/converters/glm.py``,
``GlmConverter``): the vision attention keeps HF's fused ``qkv`` ([q; k; v] rows, renamed, not interleaved) and
``proj`` under ``self_attention.``; the vision MLP's gate and up fuse into ``mlp.linear_fc1``; ``post_layernorm``
is ``blocks.final_layernorm``; the merger is ``image_encoder.projector.{proj, post_projection_norm, gate_proj,
up_proj, down_proj}``. In the LLM, q / k / v (with biases) fuse into ``linear_qkv`` per KV group (MindSpeed-MM's
``QKVMergeOp``), HF's already fused ``gate_up_proj`` is ``linear_fc1``, ``post_attention_layernorm`` is
``pre_mlp_layernorm`` and the sandwich norms keep their names. No legacy hub names (5.23 applies no conversion
mapping to glm4v).
"""
from mmx.models.qwen2_vl.hf_names import (HF_LLM_LAYER, HF_VISION_BLOCK, LLM_LAYER, LLM_QKV,  # noqa: F401
                                          OUTPUT_LAYER, VISION_BLOCK, _linear, dimensions)

VISION, HF_VISION = "image_encoder.encoder.", "model.visual."
PROJECTOR, HF_MERGER = "image_encoder.projector.", "model.visual.merger."
ATTENTION, HF_ATTENTION = LLM_LAYER + "self_attention.", HF_LLM_LAYER + "self_attn."


def vision_rows():
    return [
        *_linear(VISION + "patch_embed.proj", HF_VISION + "patch_embed.proj"),
        *_linear(VISION + "post_conv_layernorm", HF_VISION + "post_conv_layernorm", bias=False),
        (VISION + "embeddings.position_embedding.weight", HF_VISION + "embeddings.position_embedding.weight",
         "rename", {}),
        *_linear(VISION_BLOCK + "input_layernorm", HF_VISION_BLOCK + "norm1", bias=False),
        *_linear(VISION_BLOCK + "self_attention.qkv", HF_VISION_BLOCK + "attn.qkv", bias=False),
        *_linear(VISION_BLOCK + "self_attention.proj", HF_VISION_BLOCK + "attn.proj", bias=False),
        *_linear(VISION_BLOCK + "pre_mlp_layernorm", HF_VISION_BLOCK + "norm2", bias=False),
        (VISION_BLOCK + "mlp.linear_fc1.weight", (HF_VISION_BLOCK + "mlp.gate_proj.weight",
                                                  HF_VISION_BLOCK + "mlp.up_proj.weight"), "fuse_gate_up", {}),
        *_linear(VISION_BLOCK + "mlp.linear_fc2", HF_VISION_BLOCK + "mlp.down_proj", bias=False),
        *_linear(VISION + "blocks.final_layernorm", HF_VISION + "post_layernorm", bias=False),
        *_linear(VISION + "downsample", HF_VISION + "downsample"),
        *_linear(PROJECTOR + "proj", HF_MERGER + "proj", bias=False),
        *_linear(PROJECTOR + "post_projection_norm", HF_MERGER + "post_projection_norm"),
        *[row for name in ("gate_proj", "up_proj", "down_proj")
          for row in _linear(PROJECTOR + name, HF_MERGER + name, bias=False)],
    ]


def language_model():
    """The GLM-4 LLM rows (fused q/k/v with biases, four norms per layer, HF's fused gate_up_proj)."""
    return [
        ("text_decoder.embedding.word_embeddings.weight", "model.language_model.embed_tokens.weight", "rename", {}),
        *_linear(LLM_LAYER + "input_layernorm", HF_LLM_LAYER + "input_layernorm", bias=False),
        *[(ATTENTION + f"linear_qkv.{kind}", tuple(HF_ATTENTION + f"{p}_proj.{kind}" for p in "qkv"), "fuse_qkv",
           LLM_QKV) for kind in ("weight", "bias")],
        *_linear(ATTENTION + "linear_proj", HF_ATTENTION + "o_proj", bias=False),
        *_linear(LLM_LAYER + "post_self_attn_layernorm", HF_LLM_LAYER + "post_self_attn_layernorm", bias=False),
        *_linear(LLM_LAYER + "pre_mlp_layernorm", HF_LLM_LAYER + "post_attention_layernorm", bias=False),
        *_linear(LLM_LAYER + "mlp.linear_fc1", HF_LLM_LAYER + "mlp.gate_up_proj", bias=False),
        *_linear(LLM_LAYER + "mlp.linear_fc2", HF_LLM_LAYER + "mlp.down_proj", bias=False),
        *_linear(LLM_LAYER + "post_mlp_layernorm", HF_LLM_LAYER + "post_mlp_layernorm", bias=False),
        *_linear("text_decoder.decoder.final_layernorm", "model.language_model.norm", bias=False),
    ]


TABLE = (*vision_rows(), *language_model(), OUTPUT_LAYER)

LEGACY_PREFIXES = ()
