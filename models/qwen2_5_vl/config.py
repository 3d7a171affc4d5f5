"""Qwen2.5-VL config (HF ``Qwen2_5_VLConfig``: RMSNorm vision blocks, gated MLP, window attention)."""
from mmx.models.common.config import VisionConfig, model_config, read_hf_config, vision_rope_theta

FAMILY = "qwen2_5_vl"


def from_hf(source):
    """ModelConfig from a Qwen2.5-VL ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    v = raw.get("vision_config") or {}
    vision = VisionConfig(
        depth=v.get("depth", 32), hidden_size=v.get("hidden_size", 3584),
        intermediate_size=v.get("intermediate_size", 3420), num_heads=v.get("num_heads", 16),
        out_hidden_size=v.get("out_hidden_size", 3584), patch_size=v.get("patch_size", 14),
        temporal_patch_size=v.get("temporal_patch_size", 2), in_channels=v.get("in_channels", 3),
        spatial_merge_size=v.get("spatial_merge_size", 2), rope_theta=vision_rope_theta(v),
        hidden_act=v.get("hidden_act", "silu"), window_size=v.get("window_size", 112),
        fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=v.get("tokens_per_second", 4))
    return model_config(raw, FAMILY, vision)
