"""Qwen3-VL config (HF ``Qwen3VLConfig``: LayerNorm vision blocks with a learned position table and deepstack
mergers; the Qwen3 LLM with q/k norms, explicit head_dim and interleaved mRoPE)."""
from mmx.models.common.config import VisionConfig, model_config, read_hf_config, text_config, vision_rope_theta

FAMILY = "qwen3_vl"


def from_hf(source):
    """ModelConfig from a Qwen3-VL ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    v = raw.get("vision_config") or {}
    depth = v.get("depth", 27)
    deepstack = tuple(v.get("deepstack_visual_indexes", (8, 16, 24)))
    text = text_config(raw, qwen3=True)
    if any(not 0 <= index < depth for index in deepstack) or len(set(deepstack)) != len(deepstack):
        raise ValueError(f"config.json: vision_config.deepstack_visual_indexes {list(deepstack)} must be distinct "
                         f"vision block indices below depth {depth}")
    if len(deepstack) > text.num_layers:
        raise ValueError(f"config.json: {len(deepstack)} deepstack_visual_indexes feed the first LLM layers but "
                         f"the LLM has only {text.num_layers}; use at most {text.num_layers} indexes")
    side = int(v.get("num_position_embeddings", 2304) ** 0.5)
    if side * side != v.get("num_position_embeddings", 2304):
        raise ValueError(f"config.json: vision_config.num_position_embeddings {v.get('num_position_embeddings')} "
                         f"is not a square (the learned table is side x side)")
    vision = VisionConfig(
        depth=depth, hidden_size=v.get("hidden_size", 1152), intermediate_size=v.get("intermediate_size", 4304),
        num_heads=v.get("num_heads", 16), out_hidden_size=v.get("out_hidden_size", 3584),
        patch_size=v.get("patch_size", 16), temporal_patch_size=v.get("temporal_patch_size", 2),
        in_channels=v.get("in_channels", 3), spatial_merge_size=v.get("spatial_merge_size", 2),
        rope_theta=vision_rope_theta(v), hidden_act=v.get("hidden_act", "gelu_pytorch_tanh"),
        patch_embed_bias=True, num_position_embeddings=v.get("num_position_embeddings", 2304),
        deepstack_visual_indexes=deepstack)
    return model_config(raw, FAMILY, vision, text, split_video_frames=True)
