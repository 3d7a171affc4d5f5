"""Qwen3-VL: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``, whose pieces it reuses).

Differences from Qwen2-VL, in MindSpeed-MM's names (``Qwen3VLMegatronConverter``): the patch conv has a bias; the
learned position table ``model.visual.pos_embed`` → ``image_encoder.encoder.pos_embed``; the MLP is already
``linear_fc1`` / ``linear_fc2``; the merger is ``merger.{norm,linear_fc1,linear_fc2}``; each deepstack merger
``model.visual.deepstack_merger_list.{n}`` sits under the vision block whose output it reads,
``image_encoder.encoder.blocks.layers.{deepstack_visual_indexes[n]}.deepstack_layer``; the LLM has no q/k/v biases
and per-head ``q_norm`` / ``k_norm`` → ``self_attention.q_layernorm`` / ``k_layernorm``. The hub layout is
transformers' own (no legacy names).
"""
from mmx.models.qwen2_vl.hf_names import (HF_VISION_BLOCK, OUTPUT_LAYER, VISION_BLOCK, _linear,  # noqa: F401
                                          dimensions, language_model, vision_attention)

DEEPSTACK, HF_DEEPSTACK = "image_encoder.encoder.blocks.layers.{d}.deepstack_layer.", \
    "model.visual.deepstack_merger_list.{n}."


def merger(mm, hf):
    return [*_linear(mm + "layernorm", hf + "norm"), *_linear(mm + "encoder.linear_fc1", hf + "linear_fc1"),
            *_linear(mm + "encoder.linear_fc2", hf + "linear_fc2")]


VISION = (
    *_linear("image_encoder.encoder.patch_embed.proj", "model.visual.patch_embed.proj"),
    ("image_encoder.encoder.pos_embed.weight", "model.visual.pos_embed.weight", "rename", {}),
    *_linear(VISION_BLOCK + "input_layernorm", HF_VISION_BLOCK + "norm1"),
    *vision_attention(),
    *_linear(VISION_BLOCK + "pre_mlp_layernorm", HF_VISION_BLOCK + "norm2"),
    *_linear(VISION_BLOCK + "mlp.linear_fc1", HF_VISION_BLOCK + "mlp.linear_fc1"),
    *_linear(VISION_BLOCK + "mlp.linear_fc2", HF_VISION_BLOCK + "mlp.linear_fc2"),
    *merger("image_encoder.projector.", "model.visual.merger."),
    *merger(DEEPSTACK, HF_DEEPSTACK),
)

TABLE = (*VISION, *language_model(qkv_bias=False, qk_norm=True), OUTPUT_LAYER)

LEGACY_PREFIXES = ()
