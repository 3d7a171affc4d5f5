"""Qwen3-VL-MoE: ``config.from_hf(hf_dir)`` and ``model.Qwen3VLMoeForConditionalGeneration(config, stage=None)``."""
