"""Qwen3-VL (dense): ``config.from_hf(hf_dir)`` and ``model.Qwen3VLForConditionalGeneration(config, stage=None)``."""
