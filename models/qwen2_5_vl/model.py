"""Qwen2.5-VL, written once against mmx.nn / mmx.ops; the LLM, positions and vision pieces are Qwen2-VL's.

Mirrors transformers' ``models/qwen2_5_vl/modeling_qwen2_5_vl.py`` (``Qwen2_5_VLForConditionalGeneration``)::

    Qwen2_5_VLForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                        Qwen2_5VisionEncoder (HF Qwen2_5_VisionTransformerPretrainedModel)
    │   ├── encoder.patch_embed.proj         Conv3d as one matmul: patches (T, 3*2*14*14) → (T, C)
    │   ├── reorder merged 2x2 blocks window by window (window_index); rotary tables follow the same order
    │   ├── encoder.blocks.layers["{i}"]     RMSNorm → attention within each window (within each frame for
    │   │                                    fullatt_block_indexes) → RMSNorm → gated SiLU MLP
    │   ├── projector                        RMSNorm → merge 2x2 patches → Linear → GELU → Linear  (T/4, C_llm)
    │   └── undo the window order
    └── text_decoder                         the Qwen2 LLM with mRoPE (models/common/text.py); videos place
                                             frames tokens_per_second * second_per_grid_ts apart in time
"""
import numpy as np

from mmx import nn, ops
from mmx.models.common.positions import vision_cu_seqlens, vision_position_ids, vision_window_index
from mmx.models.common.text import GatedMLP
from mmx.models.common.vision import PatchMerger, VisionAttention, VisionBlock, VisionTower, vision_rotary
from mmx.models.common.vlm import QwenVLModel
from mmx.nn.layers import RMSNorm


class Qwen2_5VisionEncoder(nn.Module):
    """Patches of all images (or all videos) → merged features (N_tokens, C_llm), in input order."""

    def __init__(self, vision, stage):
        super().__init__()
        if vision.hidden_act != "silu":
            raise ValueError(f"config.json: vision_config.hidden_act {vision.hidden_act!r} is not supported by "
                             f"the Qwen2.5-VL gated MLP; it must be 'silu'")
        self.vision = vision

        def make_block(_):
            return VisionBlock(RMSNorm(vision.hidden_size, 1e-6), VisionAttention(vision.hidden_size,
                                                                                  vision.num_heads),
                               RMSNorm(vision.hidden_size, 1e-6),
                               GatedMLP(vision.hidden_size, vision.intermediate_size, bias=True))

        self.encoder = VisionTower(vision, stage.vision_layers, stage.first, make_block)
        if stage.first:
            self.projector = PatchMerger(RMSNorm(vision.hidden_size, 1e-6), vision.hidden_size,
                                         vision.out_hidden_size, vision.spatial_merge_size)

    def forward(self, pixel_values, grid_thw):
        """pixel_values (T, 3*kT*kH*kW) float, grid_thw (N, 3) numpy → ((T / merge**2, C_llm), no deepstack
        levels)."""
        vision = self.vision
        unit = vision.spatial_merge_size ** 2
        window_index, window_bounds = vision_window_index(grid_thw, vision.spatial_merge_size, vision.window_size,
                                                          vision.patch_size)
        hidden = self.encoder.patch_embed.proj(pixel_values)
        tokens, width = hidden.shape[0], hidden.shape[1]
        # Reorder whole merge blocks so each window is contiguous; positions are host metadata, reordered in numpy.
        blocks = ops.reshape(hidden, (tokens // unit, unit, width))
        hidden = ops.reshape(ops.index_select(blocks, 0, ops.tensor(window_index)), (tokens, width))
        positions = vision_position_ids(grid_thw, vision.spatial_merge_size).reshape(tokens // unit, unit, 2)
        cos, sin = vision_rotary(positions[window_index].reshape(tokens, 2), vision)
        frames, windows = vision_cu_seqlens(grid_thw), window_bounds  # numpy: host bounds for ops.attention
        for i in self.encoder.block_indices:
            segments = frames if i in vision.fullatt_block_indexes else windows
            hidden = self.encoder.blocks.layers[str(i)](hidden, cos, sin, segments)
        merged = self.projector(hidden)
        return ops.index_select(merged, 0, ops.tensor(np.argsort(window_index))), ()


class Qwen2_5_VLForConditionalGeneration(QwenVLModel):
    """Qwen2.5-VL: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Qwen2_5VisionEncoder
