"""Pieces shared by the Qwen-VL families: the Qwen2 LLM with mRoPE, vision blocks, positions, cache, loss."""
