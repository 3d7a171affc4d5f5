"""A framework-free KV cache for generation with Qwen-VL models.

Per LLM layer (global index) the keys and values seen so far, (B, S_past, Hkv, D), appended with ``ops.cat``; and per
row the next free 3-D position, so decode steps continue the multimodal positions after images and videos (HF keeps
the same offset as ``rope_deltas``: a row whose prompt ends at position p decodes at p+1, p+2, ... on all three
axes, whatever the number of tokens or padding before it).
"""
import numpy as np

from mmx import ops


class KVCache:
    """Keys/values per layer and ``next_position`` (B,) numpy int64; empty until the first (prefill) forward."""

    def __init__(self):
        self.keys, self.values = {}, {}
        self.next_position = None

    @property
    def length(self):
        """Tokens cached so far (S_past), 0 before the prefill."""
        return next(iter(self.keys.values())).shape[1] if self.keys else 0

    def update(self, layer_index, k, v):
        """Append k/v (B, S, Hkv, D) of ``layer_index`` → the full (B, S_past + S, Hkv, D) keys and values."""
        if layer_index in self.keys:
            k = ops.cat([self.keys[layer_index], k], dim=1)
            v = ops.cat([self.values[layer_index], v], dim=1)
        self.keys[layer_index], self.values[layer_index] = k, v
        return k, v

    def decode_positions(self, length):
        """(3, B, length) positions of the next ``length`` tokens of each row, then advance."""
        if self.next_position is None:
            raise ValueError("KVCache: decode step before a prefill; run the prompt through the model with this "
                             "cache first")
        positions = self.next_position[:, None] + np.arange(length)[None, :]
        self.next_position = self.next_position + length
        return np.broadcast_to(positions, (3,) + positions.shape)
