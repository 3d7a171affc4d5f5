"""InternVL3 (``internvl``): ``config.from_hf(hf_dir)`` and ``model.InternVLForConditionalGeneration(config, stage=None)``."""
