"""Qwen2.5-VL: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``, whose pieces it reuses).

Differences from Qwen2-VL: vision norms and the projector norm are RMSNorms (weight only) and the vision MLP is
gated (``gate_proj`` + ``up_proj`` fused into ``linear_fc1``, ``down_proj`` → ``linear_fc2``, all with biases).
"""
from mmx.models.qwen2_vl.hf_names import (HF_VISION_BLOCK, LEGACY_PREFIXES, OUTPUT_LAYER, VISION_BLOCK,  # noqa: F401
                                          _linear, dimensions, language_model, projector, vision_attention,
                                          vision_patch_embed)

TABLE = (
    *vision_patch_embed(),
    *_linear(VISION_BLOCK + "input_layernorm", HF_VISION_BLOCK + "norm1", bias=False),
    *vision_attention(),
    *_linear(VISION_BLOCK + "pre_mlp_layernorm", HF_VISION_BLOCK + "norm2", bias=False),
    *[(VISION_BLOCK + f"mlp.linear_fc1.{kind}", (HF_VISION_BLOCK + f"mlp.gate_proj.{kind}",
                                                 HF_VISION_BLOCK + f"mlp.up_proj.{kind}"), "fuse_gate_up", {})
      for kind in ("weight", "bias")],
    *_linear(VISION_BLOCK + "mlp.linear_fc2", HF_VISION_BLOCK + "mlp.down_proj"),
    *projector(norm_bias=False),
    *language_model(),
    OUTPUT_LAYER,
)
