"""mm checkpoints: safetensors shards in Megatron-style rank directories plus metadata (see store.py, layout.py).

The API the trainer and inference use: ``load_mm(mm_dir, stage=None) -> (metadata, {name: numpy})`` merges any
TP/PP layout into whole tensors (or one pipeline stage's subset) and ``save_mm(dir, iteration, tensors, metadata,
layout)`` writes atomically. Everything here is numpy + the safetensors format: no framework is imported.
"""
from mmx.checkpoint.layout import Layout, LayoutError
from mmx.checkpoint.store import CheckpointError, load_mm, save_mm

__all__ = ["Layout", "LayoutError", "CheckpointError", "load_mm", "save_mm"]
