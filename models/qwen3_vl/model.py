"""Qwen3-VL (dense), written once against mmx.nn / mmx.ops; the LLM and the Qwen-VL wrapper are shared.

Mirrors transformers' ``models/qwen3_vl/modeling_qwen3_vl.py`` (``Qwen3VLForConditionalGeneration``)::

    Qwen3VLForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                        Qwen3VisionEncoder (HF Qwen3VLVisionModel)
    │   ├── encoder.patch_embed.proj         Conv3d (with bias) as one matmul: patches (T, 3*2*16*16) → (T, C)
    │   ├── + encoder.pos_embed              the learned side x side table, bilinearly resampled to each frame's grid
    │   ├── 2-D rotary of each patch's (row, column)
    │   ├── encoder.blocks.layers["{i}"]     LayerNorm → attention within each frame → LayerNorm →
    │   │                                    fc1 / gelu (tanh) / fc2
    │   │   └── deepstack_layer              (blocks in deepstack_visual_indexes) merge 2x2 → LayerNorm → Linear →
    │   │                                    GELU → Linear: one deepstack level (T/4, C_llm) per such block
    │   └── projector                        LayerNorm → merge 2x2 patches → Linear → GELU → Linear  (T/4, C_llm)
    └── text_decoder                         the Qwen3 LLM (models/common/text.py): q/k RMSNorm per head,
                                             interleaved mRoPE, deepstack level l added at the visual positions
                                             after layer l; each video frame group is its own placeholder run
"""
from mmx import nn, ops
from mmx.models.common.positions import vision_cu_seqlens, vision_interpolation, vision_position_ids
from mmx.models.common.vision import (PatchMerger, VisionAttention, VisionBlock, VisionMLP, VisionTower,
                                      resampled_position_table, vision_rotary)
from mmx.models.common.vlm import QwenVLModel
from mmx.nn.layers import LayerNorm


class DeepstackVisionBlock(VisionBlock):
    """A vision block whose output also goes through its deepstack merger (HF ``deepstack_merger_list[k]``), inside
    the block so a fully sharded unit computes both: x (T, C) → (x (T, C), level (T / merge**2, C_llm))."""

    def __init__(self, input_layernorm, self_attention, pre_mlp_layernorm, mlp, deepstack_layer):
        super().__init__(input_layernorm, self_attention, pre_mlp_layernorm, mlp)
        self.deepstack_layer = deepstack_layer

    def forward(self, x, cos, sin, cu_seqlens):
        x = super().forward(x, cos, sin, cu_seqlens)
        return x, self.deepstack_layer(x)


class Qwen3VisionEncoder(nn.Module):
    """Patches of all images (or all videos) → (merged features (N_tokens, C_llm), deepstack levels), input order."""

    def __init__(self, vision, stage):
        super().__init__()
        self.vision = vision
        width, merged = vision.hidden_size, vision.hidden_size * vision.spatial_merge_size ** 2

        def make_block(i):
            parts = (LayerNorm(width, 1e-6), VisionAttention(width, vision.num_heads), LayerNorm(width, 1e-6),
                     VisionMLP(width, vision.intermediate_size, vision.hidden_act))
            if i not in vision.deepstack_visual_indexes:
                return VisionBlock(*parts)
            return DeepstackVisionBlock(*parts, PatchMerger(LayerNorm(merged, 1e-6), width, vision.out_hidden_size,
                                                            vision.spatial_merge_size, postshuffle_norm=True))

        self.encoder = VisionTower(vision, stage.vision_layers, stage.first, make_block)
        if stage.first:
            self.projector = PatchMerger(LayerNorm(width, 1e-6), width, vision.out_hidden_size,
                                         vision.spatial_merge_size)

    def forward(self, pixel_values, grid_thw):
        """pixel_values (T, 3*kT*kH*kW) float, grid_thw (N, 3) numpy → ((T / merge**2, C_llm), [one
        (T / merge**2, C_llm) per deepstack block, in block order])."""
        vision = self.vision
        hidden = self.encoder.patch_embed.proj(pixel_values)
        indices, weights = vision_interpolation(grid_thw, int(vision.num_position_embeddings ** 0.5),
                                                vision.spatial_merge_size)
        hidden = hidden + resampled_position_table(self.encoder.pos_embed, indices, weights, hidden.dtype)
        cos, sin = vision_rotary(vision_position_ids(grid_thw, vision.spatial_merge_size), vision)
        frames = vision_cu_seqlens(grid_thw)  # numpy; full attention within each frame
        levels = []
        for i in self.encoder.block_indices:
            if i in vision.deepstack_visual_indexes:
                hidden, level = self.encoder.blocks.layers[str(i)](hidden, cos, sin, frames)
                levels.append(level)
            else:
                hidden = self.encoder.blocks.layers[str(i)](hidden, cos, sin, frames)
        return self.projector(hidden), levels


class Qwen3VLForConditionalGeneration(QwenVLModel):
    """Qwen3-VL: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Qwen3VisionEncoder
