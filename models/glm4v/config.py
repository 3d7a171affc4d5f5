"""GLM-4.1V config (HF ``Glm4vConfig``): an RMSNorm vision tower with a learned 2-D position table, a gated MLP of
width ``out_hidden_size`` and a conv downsample + SwiGLU merger; the GLM-4 LLM (q/k/v biases, four RMSNorms per
layer, mRoPE on ``partial_rotary_factor`` of each head in GPT-J pairs)."""
from mmx.models.common.config import ModelConfig, TextConfig, VisionConfig, read_hf_config, vision_rope_theta

FAMILY = "glm4v"

# transformers 5.23's Glm4vConfig defaults (documented for GLM-4.1V-9B-Thinking).
DEFAULT_TOKEN_IDS = {"image_token_id": 151343, "video_token_id": 151344, "video_start_token_id": 151341,
                     "video_end_token_id": 151342}


def _field(source, key, where, model="GLM-4.1V (model_type glm4v)"):
    if key not in source:
        raise ValueError(f"config.json: {where} has no {key!r}; is this a {model} config?")
    return source[key]


def text_config(raw):
    """TextConfig of the GLM-4 LLM from a ``glm4v`` config dict (``text_config`` with ``rope_parameters``, or the
    older hub layout with ``rope_scaling`` / ``rope_theta`` / ``partial_rotary_factor`` beside them).

    As in ``Glm4vTextAttention``, head_dim is hidden / heads; without ``partial_rotary_factor`` every dim rotates
    (transformers has no default for it; the published checkpoints say 0.5)."""
    text = raw.get("text_config") or raw
    where = "text_config" if "text_config" in raw else "the top level"
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"config.json: {where}.rope_parameters.rope_type {rope_type!r} is not supported by mmx's "
                         f"GLM-4.1V (default mRoPE only); remove the rope scaling")
    heads, hidden = _field(text, "num_attention_heads", where), _field(text, "hidden_size", where)
    head_dim = hidden // heads
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0)))
    rotary_dim = int(head_dim * partial)
    mrope = tuple(rope.get("mrope_section", (8, 12, 12)))
    if rotary_dim % 2 or sum(mrope) * 2 != rotary_dim:
        raise ValueError(f"config.json: {where}.rope_parameters.mrope_section {list(mrope)} sums to {sum(mrope)} "
                         f"but the rotated dims (head_dim {head_dim} x partial_rotary_factor {partial}) / 2 are "
                         f"{rotary_dim / 2}; fix mrope_section or partial_rotary_factor")
    theta = rope.get("rope_theta", text.get("rope_theta", 10000.0))
    tie = raw.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False)
    return TextConfig(
        vocab_size=_field(text, "vocab_size", where), hidden_size=hidden,
        intermediate_size=_field(text, "intermediate_size", where),
        num_layers=_field(text, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or heads, rms_norm_eps=text.get("rms_norm_eps", 1e-5),
        rope_theta=float(theta), mrope_section=mrope, tie_word_embeddings=bool(tie), head_dim=head_dim,
        attention_bias=True, rotary_dim=rotary_dim, rotary_interleaved=True, sandwich_norms=True)


def vision_config(v):
    """VisionConfig of the GLM-4.1V vision tower (``vision_config``; defaults: transformers' Glm4vVisionConfig)."""
    patch, image_size = v.get("patch_size", 14), v.get("image_size", 336)
    if v.get("attention_bias", False):
        raise ValueError("config.json: vision_config.attention_bias is true; mmx's GLM-4.1V vision attention has no "
                         "qkv bias (no published GLM-4.1V uses one); set it to false")
    if v.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: vision_config.hidden_act {v.get('hidden_act')!r} is not supported by the "
                         f"GLM-4.1V gated MLPs; it must be 'silu'")
    if isinstance(image_size, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise ValueError(f"config.json: vision_config.image_size {image_size} / patch_size {patch} must be ints "
                         f"(the learned position table is square)")
    return VisionConfig(
        depth=v.get("depth", 24), hidden_size=v.get("hidden_size", 1536),
        intermediate_size=v.get("intermediate_size", 13696), num_heads=v.get("num_heads", 12),
        out_hidden_size=v.get("out_hidden_size", 4096), patch_size=patch,
        temporal_patch_size=v.get("temporal_patch_size", 2), in_channels=v.get("in_channels", 3),
        spatial_merge_size=v.get("spatial_merge_size", 2), rope_theta=vision_rope_theta(v), hidden_act="silu",
        patch_embed_bias=True, num_position_embeddings=(image_size // patch) ** 2,
        rms_norm_eps=v.get("rms_norm_eps", 1e-5))


def from_hf(source):
    """ModelConfig from a GLM-4.1V ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    text, vision = text_config(raw), vision_config(raw.get("vision_config") or {})
    if vision.out_hidden_size != text.hidden_size:
        raise ValueError(f"config.json: vision_config.out_hidden_size {vision.out_hidden_size} must equal "
                         f"text_config.hidden_size {text.hidden_size} (the merger writes LLM embeddings)")
    ids = {key: raw.get(key, default) for key, default in DEFAULT_TOKEN_IDS.items()}
    return ModelConfig(family=FAMILY, text=text, vision=vision, image_token_id=ids["image_token_id"],
                       video_token_id=ids["video_token_id"], vision_start_token_id=-1, split_video_frames=True,
                       video_span_token_ids=(ids["video_start_token_id"], ids["video_end_token_id"]))
