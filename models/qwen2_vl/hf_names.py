"""Qwen2-VL: the HF ↔ mm name table, read by mmx.convert in both directions (hf_to_mm and mm_to_hf).

Each row is ``(mm name, HF name or names, transform, transform arguments)``. ``{i}`` stands for a global vision
block index, ``{j}`` for a global LLM layer index, and (Qwen3-VL) ``{d}`` for a vision block with a deepstack
merger, whose HF name counts those mergers with ``{n}`` (``deepstack_merger_list.{n}``); in MoE models ``{m}`` is a
MoE layer and ``{k}`` a layer with the dense MLP. Transforms are named (``convert/transforms.py``); their
arguments name entries of :func:`dimensions` (e.g. head counts). HF names are those transformers ≥ 4.52 writes;
:data:`LEGACY_PREFIXES` maps them to the older hub names (``visual.*``, ``model.layers.*``), which are read too and
written back when a checkpoint came with them. Pure data (+ the numbers of a config): no framework imports.
"""

VISION_BLOCK, HF_VISION_BLOCK = "image_encoder.encoder.blocks.layers.{i}.", "model.visual.blocks.{i}."
LLM_LAYER, HF_LLM_LAYER = "text_decoder.decoder.layers.{j}.", "model.language_model.layers.{j}."
VISION_QKV = {"num_heads": "vision_heads"}
LLM_QKV = {"num_heads": "llm_heads", "num_kv_heads": "llm_kv_heads"}


def _linear(mm, hf, bias=True):
    """Rows for a plain (renamed) linear or norm: weight, and bias when it has one."""
    rows = [(mm + ".weight", hf + ".weight", "rename", {})]
    return rows + ([(mm + ".bias", hf + ".bias", "rename", {})] if bias else [])


def vision_patch_embed():
    return [("image_encoder.encoder.patch_embed.proj.weight", "model.visual.patch_embed.proj.weight", "rename", {})]


def vision_attention():
    return [
        (VISION_BLOCK + "self_attention.linear_qkv.weight", HF_VISION_BLOCK + "attn.qkv.weight", "interleave_qkv",
         VISION_QKV),
        (VISION_BLOCK + "self_attention.linear_qkv.bias", HF_VISION_BLOCK + "attn.qkv.bias", "interleave_qkv",
         VISION_QKV),
        *_linear(VISION_BLOCK + "self_attention.linear_proj", HF_VISION_BLOCK + "attn.proj"),
    ]


def projector(norm_bias):
    return [*_linear("image_encoder.projector.layernorm", "model.visual.merger.ln_q", bias=norm_bias),
            *_linear("image_encoder.projector.encoder.linear_fc1", "model.visual.merger.mlp.0"),
            *_linear("image_encoder.projector.encoder.linear_fc2", "model.visual.merger.mlp.2")]


def language_model(qkv_bias=True, qk_norm=False, dense_mlp="{j}"):
    """The LLM rows: Qwen2 (q/k/v biases) or Qwen3 (no biases; per-head ``q_norm`` / ``k_norm`` →
    ``q_layernorm`` / ``k_layernorm``, MindSpeed-MM's names). ``dense_mlp``: the placeholder of the layers with a
    dense MLP (``{k}`` in a MoE model: the layers not in ``moe_layers``)."""
    hf_attn = HF_LLM_LAYER + "self_attn."
    mlp, hf_mlp = (LLM_LAYER.replace("{j}", dense_mlp) + "mlp.", HF_LLM_LAYER.replace("{j}", dense_mlp) + "mlp.")
    return [
        ("text_decoder.embedding.word_embeddings.weight", "model.language_model.embed_tokens.weight", "rename", {}),
        *_linear(LLM_LAYER + "input_layernorm", HF_LLM_LAYER + "input_layernorm", bias=False),
        *[(LLM_LAYER + f"self_attention.linear_qkv.{kind}", tuple(hf_attn + f"{p}_proj.{kind}" for p in "qkv"),
           "fuse_qkv", LLM_QKV) for kind in (("weight", "bias") if qkv_bias else ("weight",))],
        *(_linear(LLM_LAYER + "self_attention.q_layernorm", hf_attn + "q_norm", bias=False) +
          _linear(LLM_LAYER + "self_attention.k_layernorm", hf_attn + "k_norm", bias=False) if qk_norm else []),
        *_linear(LLM_LAYER + "self_attention.linear_proj", hf_attn + "o_proj", bias=False),
        *_linear(LLM_LAYER + "pre_mlp_layernorm", HF_LLM_LAYER + "post_attention_layernorm", bias=False),
        (mlp + "linear_fc1.weight", (hf_mlp + "gate_proj.weight", hf_mlp + "up_proj.weight"), "fuse_gate_up", {}),
        *_linear(mlp + "linear_fc2", hf_mlp + "down_proj", bias=False),
        *_linear("text_decoder.decoder.final_layernorm", "model.language_model.norm", bias=False),
    ]


# Absent from checkpoints whose config says tie_word_embeddings (the output layer reuses the token embedding).
OUTPUT_LAYER = ("text_decoder.output_layer.weight", "lm_head.weight", "rename", {})

TABLE = (
    *vision_patch_embed(),
    *_linear(VISION_BLOCK + "input_layernorm", HF_VISION_BLOCK + "norm1"),
    *vision_attention(),
    *_linear(VISION_BLOCK + "pre_mlp_layernorm", HF_VISION_BLOCK + "norm2"),
    *_linear(VISION_BLOCK + "mlp.linear_fc1", HF_VISION_BLOCK + "mlp.fc1"),
    *_linear(VISION_BLOCK + "mlp.linear_fc2", HF_VISION_BLOCK + "mlp.fc2"),
    *projector(norm_bias=True),
    *language_model(),
    OUTPUT_LAYER,
)

# (transformers ≥ 4.52 prefix, legacy hub prefix); lm_head.weight is the same in both.
LEGACY_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))


def dimensions(config):
    """The numbers conversion and layout validation need, from a parsed HF config.json (new or legacy form, read
    by the family's config reader): {vision_layers, llm_layers, vision_heads, llm_heads, llm_kv_heads,
    vocab_size, tied, num_experts, deepstack_visual_indexes}."""
    from mmx.models import config_from_hf

    model = config_from_hf(config)
    return {"vision_layers": model.vision.depth, "llm_layers": model.text.num_layers,
            "vision_heads": model.vision.num_heads, "llm_heads": model.text.num_heads,
            "llm_kv_heads": model.text.num_kv_heads, "vocab_size": model.text.vocab_size,
            "tied": bool(model.text.tie_word_embeddings), "num_experts": model.text.num_experts,
            "deepstack_visual_indexes": list(model.vision.deepstack_visual_indexes)}
