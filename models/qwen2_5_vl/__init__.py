"""Qwen2.5-VL: ``config.from_hf(hf_dir)`` and ``model.Qwen2_5_VLForConditionalGeneration(config, stage=None)``."""
