"""GLM-4.5V: ``config.from_hf(hf_dir)`` and ``model.Glm4vMoeForConditionalGeneration(config, stage=None)``."""
