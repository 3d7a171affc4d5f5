"""Qwen2-VL, written once against mmx.nn / mmx.ops.

Mirrors transformers' ``models/qwen2_vl/modeling_qwen2_vl.py`` (``Qwen2VLForConditionalGeneration``)::

    Qwen2VLForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                        Qwen2VisionEncoder (HF Qwen2VisionTransformerPretrainedModel)
    │   ├── encoder.patch_embed.proj         Conv3d as one matmul: patches (T, 3*2*14*14) → (T, C)
    │   ├── 2-D rotary of each patch's (row, column)
    │   ├── encoder.blocks.layers["{i}"]     LayerNorm → attention within each frame → LayerNorm → fc1/quick_gelu/fc2
    │   └── projector                        LayerNorm → merge 2x2 patches → Linear → GELU → Linear  (T/4, C_llm)
    └── text_decoder                         the Qwen2 LLM with mRoPE (models/common/text.py)
"""
from mmx import nn, ops
from mmx.models.common.positions import vision_cu_seqlens, vision_position_ids
from mmx.models.common.vision import (PatchMerger, VisionAttention, VisionBlock, VisionMLP, VisionTower,
                                      vision_rotary)
from mmx.models.common.vlm import QwenVLModel
from mmx.nn.layers import LayerNorm

class Qwen2VisionEncoder(nn.Module):
    """Patches of all images (or all videos) → merged features (N_tokens, C_llm), in input order."""

    def __init__(self, vision, stage):
        super().__init__()
        self.vision = vision

        def make_block(_):
            return VisionBlock(LayerNorm(vision.hidden_size, 1e-6), VisionAttention(vision.hidden_size,
                                                                                    vision.num_heads),
                               LayerNorm(vision.hidden_size, 1e-6),
                               VisionMLP(vision.hidden_size, vision.intermediate_size, vision.hidden_act))

        self.encoder = VisionTower(vision, stage.vision_layers, stage.first, make_block)
        if stage.first:
            self.projector = PatchMerger(LayerNorm(vision.hidden_size, 1e-6), vision.hidden_size,
                                         vision.out_hidden_size, vision.spatial_merge_size)

    def forward(self, pixel_values, grid_thw):
        """pixel_values (T, 3*kT*kH*kW) float, grid_thw (N, 3) numpy → ((T / merge**2, C_llm), no deepstack
        levels)."""
        hidden = self.encoder.patch_embed.proj(pixel_values)
        cos, sin = vision_rotary(vision_position_ids(grid_thw, self.vision.spatial_merge_size), self.vision)
        frames = vision_cu_seqlens(grid_thw)  # numpy; full attention within each frame
        for i in self.encoder.block_indices:
            hidden = self.encoder.blocks.layers[str(i)](hidden, cos, sin, frames)
        return self.projector(hidden), ()


class Qwen2VLForConditionalGeneration(QwenVLModel):
    """Qwen2-VL: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Qwen2VisionEncoder
