"""GLM-4.1V (``glm4v``): ``config.from_hf(hf_dir)`` and ``model.Glm4vForConditionalGeneration(config, stage=None)``."""
