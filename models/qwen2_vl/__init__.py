"""Qwen2-VL: ``config.from_hf(hf_dir)`` and ``model.Qwen2VLForConditionalGeneration(config, stage=None)``."""
