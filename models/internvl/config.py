"""InternVL3 config (HF ``InternVLConfig``): InternViT (CLS token, learned absolute positions, layer scale; the
300M tower's LayerNorm + q/k/v biases or the 6B tower's RMSNorm + qk-norm), pixel shuffle (``downsample_ratio``
0.5) + LayerNorm / Linear / GELU / Linear projector, and the Qwen2.5 LLM with plain 1-D RoPE (mmx's mRoPE with all
three position rows equal, which is 1-D RoPE exactly)."""
from dataclasses import dataclass

from mmx.models.common.config import ModelConfig, TextConfig, VisionConfig, read_hf_config

FAMILY = "internvl"


@dataclass(frozen=True)
class InternVisionConfig(VisionConfig):
    """VisionConfig + InternViT's switches."""

    norm_type: str = "layer_norm"    # "layer_norm" (InternViT-300M) | "rms_norm" (InternViT-6B)
    qk_norm: bool = False            # 6B: RMSNorm over the full width of q and k, before the head split
    qkv_bias: bool = True            # 300M: q/k/v biases
    image_size: int = 448            # the position table covers (image_size / patch_size)**2 patches


@dataclass(frozen=True)
class InternVLModelConfig(ModelConfig):
    """ModelConfig + the position limit of plain RoPE under the checkpoint's rope scaling."""

    plain_rope_positions: int = 0    # "dynamic" NTK RoPE equals plain RoPE below max_position_embeddings (0: no limit)


def _field(source, key, where):
    if key not in source:
        raise ValueError(f"config.json: {where} has no {key!r}; is this an InternVL (model_type internvl) config?")
    return source[key]


def _square(value, key):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"config.json: vision_config.{key} {list(value)} must be square (InternVL tiles are)")
        return int(value[0])
    return int(value)


def rope_scaling(raw):
    """(rope parameters dict, plain-RoPE position limit). ``dynamic`` NTK scaling (InternVL's Qwen2.5 llm_config
    carries it) leaves RoPE plain up to ``max_position_embeddings`` (transformers' ``_compute_dynamic_ntk_parameters``:
    the base changes only when a position reaches past it), so mmx runs it as plain RoPE and refuses longer inputs."""
    text = _field(raw, "text_config", "the top level")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "dynamic":
        return rope, int(_field(text, "max_position_embeddings", "text_config"))
    if kind != "default":
        raise ValueError(f"config.json: text_config.rope_parameters.rope_type {kind!r} is not supported by mmx's "
                         f"InternVL (plain RoPE, or 'dynamic' within max_position_embeddings); remove the rope scaling")
    return rope, 0


def text_config(raw):
    """The Qwen2 LLM: q/k/v biases, 1-D RoPE (``rope_parameters`` or the older ``rope_theta``)."""
    text = _field(raw, "text_config", "the top level")
    rope, _ = rope_scaling(raw)
    heads, hidden = _field(text, "num_attention_heads", "text_config"), _field(text, "hidden_size", "text_config")
    head_dim = hidden // heads
    tie = raw.get("tie_word_embeddings", True) or text.get("tie_word_embeddings", False)
    return TextConfig(
        vocab_size=_field(text, "vocab_size", "text_config"), hidden_size=hidden,
        intermediate_size=_field(text, "intermediate_size", "text_config"),
        num_layers=_field(text, "num_hidden_layers", "text_config"), num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or heads, rms_norm_eps=text.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
        mrope_section=(head_dim // 2, 0, 0), tie_word_embeddings=bool(tie), head_dim=head_dim,
        attention_bias=True)


def vision_config(v, raw, text_hidden):
    """InternVisionConfig from ``vision_config`` (defaults: transformers' InternVLVisionConfig)."""
    if raw.get("downsample_ratio", 0.5) != 0.5:
        raise ValueError(f"config.json: downsample_ratio {raw.get('downsample_ratio')} is not supported; mmx's "
                         f"InternVL pixel shuffle merges 2x2 patches (downsample_ratio 0.5, every InternVL3)")
    if raw.get("vision_feature_layer", -1) != -1 or raw.get("vision_feature_select_strategy", "default") != "default":
        raise ValueError("config.json: vision_feature_layer must be -1 and vision_feature_select_strategy "
                         "'default' (the last layer without the CLS token, as every InternVL3)")
    for key, want in (("hidden_act", "gelu"), ("use_mean_pooling", True), ("use_mask_token", False),
                      ("use_absolute_position_embeddings", True)):
        if v.get(key, want) != want:
            raise ValueError(f"config.json: vision_config.{key} {v.get(key)!r} is not supported by mmx's InternViT "
                             f"(it must be {want!r})")
    if raw.get("projector_hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: projector_hidden_act {raw.get('projector_hidden_act')!r} must be 'gelu'")
    norm_type = v.get("norm_type", "layer_norm")
    if norm_type not in ("layer_norm", "rms_norm"):
        raise ValueError(f"config.json: vision_config.norm_type {norm_type!r}: use 'layer_norm' or 'rms_norm'")
    patch, image = _square(v.get("patch_size", 14), "patch_size"), _square(v.get("image_size", 448), "image_size")
    return InternVisionConfig(
        depth=v.get("num_hidden_layers", 24), hidden_size=v.get("hidden_size", 1024),
        intermediate_size=v.get("intermediate_size", 4096), num_heads=v.get("num_attention_heads", 16),
        out_hidden_size=text_hidden, patch_size=patch, temporal_patch_size=1, in_channels=v.get("num_channels", 3),
        spatial_merge_size=2, rope_theta=0.0, hidden_act="gelu", patch_embed_bias=True,
        num_position_embeddings=(image // patch) ** 2, rms_norm_eps=v.get("layer_norm_eps", 1e-6),
        norm_type=norm_type, qk_norm=bool(v.get("use_qk_norm", False)), qkv_bias=bool(v.get("attention_bias", False)),
        image_size=image)


def from_hf(source):
    """ModelConfig from an InternVL ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    text = text_config(raw)
    vision = vision_config(raw.get("vision_config") or {}, raw, text.hidden_size)
    return InternVLModelConfig(family=FAMILY, text=text, vision=vision,
                               image_token_id=raw.get("image_token_id", 151667), video_token_id=-1,
                               vision_start_token_id=-1, positions_1d=True, plain_rope_positions=rope_scaling(raw)[1])
