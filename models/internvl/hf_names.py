"""InternVL3: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``), for both HF layouts.

The mm names are those of MindSpeed-MM's InternVL converter (``checkpoint/vlm_model/converters/internvl.py``,
``InternVLConverter``): the vision tower is ``image_encoder.encoder.{embeddings, encoder.layers.{i}}`` (the double
``encoder``), its attention ``self_attention.linear_qkv`` keeps the original fused ``attn.qkv`` rows [q; k; v]
(not interleaved), qk-norms are ``q_layernorm`` / ``k_layernorm``, layer scales ``ls1`` / ``ls2``; the projector
``mlp1.{0,1,3}`` is ``image_encoder.projector.{norm, linear_fc1, linear_fc2}``; the Qwen2 LLM as in Qwen2-VL (q/k/v
fused per KV group with biases, ``linear_fc1`` = [gate; up]).

Two HF layouts, told apart by the keys and recorded in the mm metadata (``hf_names``) so ``mm_to_hf`` writes the
one it read:

- ``"transformers"`` / ``"legacy"``: transformers' ``-hf`` layout, separate ``q_proj`` / ``k_proj`` / ``v_proj``
  (concatenated into ``linear_qkv``). "transformers" is its in-memory naming (``model.vision_tower.*``,
  ``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.weight``: OpenGVLab's custom2hf script),
  "legacy" the llava naming 5.23's ``save_pretrained`` writes and the ``-hf`` hub repos hold (``vision_tower.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``).
- ``"original"``: OpenGVLab's remote-code repos (``vision_model.*``, ``mlp1.*``, ``language_model.model.*``,
  ``language_model.lm_head.weight``), the vision ``attn.qkv`` renamed as is.

Rows depend on the config (LayerNorm biases, q/k/v biases, qk-norm: the 300M and 6B towers) and the layout:
:func:`table`.
"""
from mmx.models.qwen2_vl.hf_names import OUTPUT_LAYER, _linear, language_model  # noqa: F401

VISION, LAYER = "image_encoder.encoder.", "image_encoder.encoder.encoder.layers.{i}."
PROJECTOR = "image_encoder.projector."
HF_TOWER, HF_LAYER = "model.vision_tower.", "model.vision_tower.encoder.layer.{i}."
HF_PROJECTOR = "model.multi_modal_projector."
ORIGINAL_TOWER, ORIGINAL_LAYER = "vision_model.", "vision_model.encoder.layers.{i}."

# (in-memory prefix, save_pretrained / hub -hf prefix)
LEGACY_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                   ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
STYLE_PREFIXES = {"original": ("vision_model.", "mlp1.")}


def _vision_rows(dims):
    """The -hf layout's vision and projector rows."""
    norm_bias, qkv_bias = not dims["vision_rms_norm"], dims["vision_qkv_bias"]
    attention = HF_LAYER + "attention."
    rows = [
        (VISION + "embeddings.class_embedding", HF_TOWER + "embeddings.cls_token", "rename", {}),
        *_linear(VISION + "embeddings.patch_embedding", HF_TOWER + "embeddings.patch_embeddings.projection"),
        (VISION + "embeddings.position_embedding", HF_TOWER + "embeddings.position_embeddings", "rename", {}),
        *_linear(LAYER + "input_layernorm", HF_LAYER + "layernorm_before", bias=norm_bias),
        *[(LAYER + f"self_attention.linear_qkv.{kind}", tuple(attention + f"{p}_proj.{kind}" for p in "qkv"),
           "concat", {}) for kind in (("weight", "bias") if qkv_bias else ("weight",))],
        *(_linear(LAYER + "self_attention.q_layernorm", attention + "q_norm", bias=False) +
          _linear(LAYER + "self_attention.k_layernorm", attention + "k_norm", bias=False)
          if dims["vision_qk_norm"] else []),
        *_linear(LAYER + "self_attention.linear_proj", attention + "projection_layer"),
        (LAYER + "ls1", HF_LAYER + "lambda_1", "rename", {}),
        (LAYER + "ls2", HF_LAYER + "lambda_2", "rename", {}),
        *_linear(LAYER + "pre_mlp_layernorm", HF_LAYER + "layernorm_after", bias=norm_bias),
        *_linear(LAYER + "mlp.linear_fc1", HF_LAYER + "mlp.fc1"),
        *_linear(LAYER + "mlp.linear_fc2", HF_LAYER + "mlp.fc2"),
        *_linear(PROJECTOR + "norm", HF_PROJECTOR + "layer_norm"),
        *_linear(PROJECTOR + "linear_fc1", HF_PROJECTOR + "linear_1"),
        *_linear(PROJECTOR + "linear_fc2", HF_PROJECTOR + "linear_2"),
    ]
    return rows


# -hf name piece → original name piece, for the vision and projector rows (the LLM only changes prefix)
_ORIGINAL = ((HF_LAYER + "attention.q_proj.", ORIGINAL_LAYER + "attn.qkv."),
             (HF_LAYER + "attention.q_norm.", ORIGINAL_LAYER + "attn.q_norm."),
             (HF_LAYER + "attention.k_norm.", ORIGINAL_LAYER + "attn.k_norm."),
             (HF_LAYER + "attention.projection_layer.", ORIGINAL_LAYER + "attn.proj."),
             (HF_LAYER + "layernorm_before.", ORIGINAL_LAYER + "norm1."),
             (HF_LAYER + "layernorm_after.", ORIGINAL_LAYER + "norm2."),
             (HF_LAYER + "lambda_1", ORIGINAL_LAYER + "ls1"), (HF_LAYER + "lambda_2", ORIGINAL_LAYER + "ls2"),
             (HF_LAYER + "mlp.", ORIGINAL_LAYER + "mlp."),
             (HF_TOWER + "embeddings.cls_token", ORIGINAL_TOWER + "embeddings.class_embedding"),
             (HF_TOWER + "embeddings.patch_embeddings.projection.", ORIGINAL_TOWER + "embeddings.patch_embedding."),
             (HF_TOWER + "embeddings.position_embeddings", ORIGINAL_TOWER + "embeddings.position_embedding"),
             (HF_PROJECTOR + "layer_norm.", "mlp1.0."), (HF_PROJECTOR + "linear_1.", "mlp1.1."),
             (HF_PROJECTOR + "linear_2.", "mlp1.3."),
             ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


def _original(name):
    for new, old in _ORIGINAL:
        if name.startswith(new):
            return old + name[len(new):]
    raise KeyError(name)


def table(dims, style):
    """The rows for a checkpoint of ``dims`` in HF layout ``style``."""
    rows = (*_vision_rows(dims), *language_model(), OUTPUT_LAYER)
    if style != "original":
        return rows
    out = []
    for mm, hf, transform, arguments in rows:
        if transform == "concat":           # the original attn.qkv is already [q; k; v]
            out.append((mm, _original(hf[0]), "rename", {}))
        else:
            hf = (hf,) if isinstance(hf, str) else hf
            out.append((mm, tuple(_original(h) for h in hf), transform, arguments))
    return tuple(out)


TABLE = table({"vision_rms_norm": False, "vision_qkv_bias": True, "vision_qk_norm": False}, "transformers")


def dimensions(config):
    """The numbers conversion and layout validation need (qwen2_vl's keys + the vision tower's switches)."""
    from mmx.models import config_from_hf

    model = config_from_hf(config)
    vision = model.vision
    return {"vision_layers": vision.depth, "llm_layers": model.text.num_layers, "vision_heads": vision.num_heads,
            "llm_heads": model.text.num_heads, "llm_kv_heads": model.text.num_kv_heads,
            "vocab_size": model.text.vocab_size, "tied": bool(model.text.tie_word_embeddings), "num_experts": 0,
            "deepstack_visual_indexes": [], "vision_rms_norm": vision.norm_type == "rms_norm",
            "vision_qkv_bias": vision.qkv_bias, "vision_qk_norm": vision.qk_norm}
