"""Qwen2-VL config (HF ``Qwen2VLConfig``: vision ``embed_dim`` / ``mlp_ratio``, LayerNorm, quick_gelu MLP)."""
from mmx.models.common.config import VisionConfig, model_config, read_hf_config, vision_rope_theta

FAMILY = "qwen2_vl"


def from_hf(source):
    """ModelConfig from a Qwen2-VL ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    v = raw.get("vision_config") or {}
    width = v.get("embed_dim", 1280)
    vision = VisionConfig(
        depth=v.get("depth", 32), hidden_size=width, intermediate_size=int(width * v.get("mlp_ratio", 4)),
        num_heads=v.get("num_heads", 16), out_hidden_size=v.get("hidden_size", 3584),
        patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
        in_channels=v.get("in_channels", 3), spatial_merge_size=v.get("spatial_merge_size", 2),
        rope_theta=vision_rope_theta(v), hidden_act=v.get("hidden_act", "quick_gelu"))
    return model_config(raw, FAMILY, vision)
