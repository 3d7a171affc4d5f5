"""GLM-4.1V, written once against mmx.nn / mmx.ops; the LLM (with GLM's flags) and the VLM wrapper are shared.

Mirrors transformers' ``models/glm4v/modeling_glm4v.py`` (``Glm4vForConditionalGeneration``)::

    Glm4vForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                          Glm4vVisionEncoder (HF Glm4vVisionModel); a video's temporal
    │   │                                      patches run as one-frame grids (HF get_video_features)
    │   ├── encoder.patch_embed.proj           Conv3d (with bias) as one matmul: patches (T, 3*2*14*14) → (T, C)
    │   ├── encoder.post_conv_layernorm        RMSNorm
    │   ├── + encoder.embeddings.position_embedding   the learned side x side table resampled bicubically to each
    │   │                                      frame's grid (HF F.grid_sample; 16 host-side taps per patch)
    │   ├── 2-D rotary of each patch's (row, column)
    │   ├── encoder.blocks.layers["{i}"]       RMSNorm → attention within each frame (self_attention.qkv holds
    │   │                                      HF's [q; k; v] rows) → RMSNorm → gated SiLU MLP of width
    │   │                                      out_hidden_size (linear_fc1 = [gate; up])
    │   ├── encoder.blocks.final_layernorm     RMSNorm (HF post_layernorm)
    │   ├── encoder.downsample                 Conv2d 2x2 / stride 2 over each merge block, one matmul: (T/4, C_llm)
    │   └── projector                          proj → LayerNorm → GELU → down(silu(gate) * up)   (HF merger)
    └── text_decoder                           the GLM-4 LLM (models/common/text.py): q/k/v biases, RMSNorms before
                                               and after attention and MLP, mRoPE (contiguous T/H/W sections) on the
                                               first rotary_dim dims of each head in GPT-J pairs; video frames are
                                               <|image|> runs inside <|begin_of_video|> ... <|end_of_video|>
"""
import numpy as np

from mmx import nn, ops
from mmx.models.common.positions import (vision_bicubic_interpolation, vision_cu_seqlens, vision_position_ids)
from mmx.models.common.text import GatedMLP
from mmx.models.common.vision import (BlockStack, PatchEmbedHolder, VisionBlock, resampled_position_table,
                                      vision_rotary)
from mmx.models.common.vlm import QwenVLModel
from mmx.nn.layers import Embedding, LayerNorm, Linear, RMSNorm


class Glm4vVisionAttention(nn.Module):
    """Bidirectional attention within frames with 2-D rotary (HF ``Glm4vVisionAttention``): ``qkv`` rows are
    [q (all heads); k; v], as HF and MindSpeed-MM's GLM converter store them; ``proj`` has no bias.
    x (T, C), cos/sin (T, D), cu_seqlens (N+1,) int32 (numpy host bounds or a tensor) → (T, C)."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size, bias=False)
        self.proj = Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, cos, sin, cu_seqlens):
        tokens = x.shape[0]
        qkv = ops.reshape(self.qkv(x), (tokens, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        q, k = ops.apply_rotary(q, cos, sin), ops.apply_rotary(k, cos, sin)
        out = ops.attention(q, k, v, causal=False, cu_seqlens=cu_seqlens)
        return self.proj(ops.reshape(out, (tokens, self.num_heads * self.head_dim)))


class Downsample(nn.Module):
    """HF ``downsample``: ``Conv2d(C, C_out, kernel=stride=merge)`` on each merge x merge block of patches, as one
    matmul. x (T, C), blocks contiguous in (row, column) order → (T / merge**2, C_out); the weight keeps the Conv2d
    shape (C_out, C, merge, merge) so checkpoints read like HF's."""

    def __init__(self, hidden_size, out_size, spatial_merge_size):
        super().__init__()
        self.hidden_size, self.out_size, self.unit = hidden_size, out_size, spatial_merge_size ** 2
        self.weight = nn.Parameter(ops.zeros((out_size, hidden_size, spatial_merge_size, spatial_merge_size)))
        self.bias = nn.Parameter(ops.zeros((out_size,)))

    def forward(self, x):
        # HF: view(-1, 2, 2, C).permute(0, 3, 1, 2): each block's conv input is channel-major (C, kH, kW).
        blocks = ops.transpose(ops.reshape(x, (-1, self.unit, self.hidden_size)), 1, 2)
        weight = ops.reshape(self.weight, (self.out_size, self.hidden_size * self.unit))
        return ops.linear(ops.reshape(blocks, (-1, self.hidden_size * self.unit)), weight, self.bias)


class Glm4vProjector(nn.Module):
    """HF ``Glm4vVisionPatchMerger`` (``image_encoder.projector``): x (N, D) → proj (D → D) → LayerNorm (eps 1e-5)
    → GELU (erf) → down_proj(silu(gate_proj(x)) * up_proj(x)) with gate / up D → context (no biases) → (N, D)."""

    def __init__(self, dim, context_dim):
        super().__init__()
        self.proj = Linear(dim, dim, bias=False)
        self.post_projection_norm = LayerNorm(dim, 1e-5)
        self.gate_proj = Linear(dim, context_dim, bias=False)
        self.up_proj = Linear(dim, context_dim, bias=False)
        self.down_proj = Linear(context_dim, dim, bias=False)

    def forward(self, x):
        x = ops.gelu(self.post_projection_norm(self.proj(x)))
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class _Embeddings(nn.Module):
    """HF ``Glm4vVisionEmbeddings``: the learned (image_size / patch)**2 position table."""

    def __init__(self, vision):
        super().__init__()
        self.position_embedding = Embedding(vision.num_position_embeddings, vision.hidden_size)


class Glm4vVisionTower(nn.Module):
    """``image_encoder.encoder``: this stage's vision blocks and, on the first stage, the pieces around them (patch
    embedding, post-conv norm, position table, final norm, downsample)."""

    def __init__(self, vision, stage):
        super().__init__()
        width, eps = vision.hidden_size, vision.rms_norm_eps
        self.block_indices = tuple(stage.vision_layers)

        def make_block():
            return VisionBlock(RMSNorm(width, eps), Glm4vVisionAttention(width, vision.num_heads), RMSNorm(width, eps),
                               GatedMLP(width, vision.out_hidden_size, bias=False))

        if stage.first:
            self.patch_embed = PatchEmbedHolder(vision)
            self.post_conv_layernorm = RMSNorm(width, eps)
            self.embeddings = _Embeddings(vision)
            self.downsample = Downsample(width, vision.out_hidden_size, vision.spatial_merge_size)
        self.blocks = BlockStack({str(i): make_block() for i in self.block_indices},
                                 RMSNorm(width, eps) if stage.first else None)


def frame_grids(grid_thw):
    """Each temporal patch of each image / video as its own (1, h, w) row, in order: (N_frames, 3) int64."""
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    frames = np.repeat(grid, grid[:, 0], axis=0)
    frames[:, 0] = 1
    return frames


class Glm4vVisionEncoder(nn.Module):
    """Patches of all images (or all videos) → merged features (N_tokens, C_llm), in input order; no deepstack."""

    def __init__(self, vision, stage):
        super().__init__()
        self.vision = vision
        self.encoder = Glm4vVisionTower(vision, stage)
        if stage.first:
            self.projector = Glm4vProjector(vision.out_hidden_size, vision.intermediate_size)

    def forward(self, pixel_values, grid_thw):
        """pixel_values (T, 3*kT*kH*kW) float, grid_thw (N, 3) numpy → ((T / merge**2, C_llm), ())."""
        vision, encoder = self.vision, self.encoder
        # HF flattens video grids to one-frame rows before the tower (its position table lookup is per frame).
        grid = frame_grids(grid_thw)
        hidden = encoder.post_conv_layernorm(encoder.patch_embed.proj(pixel_values))
        cos, sin = vision_rotary(vision_position_ids(grid, vision.spatial_merge_size), vision)
        indices, weights = vision_bicubic_interpolation(grid, int(round(vision.num_position_embeddings ** 0.5)),
                                                        vision.spatial_merge_size)
        hidden = hidden + resampled_position_table(encoder.embeddings.position_embedding, indices, weights,
                                                   hidden.dtype)
        frames = vision_cu_seqlens(grid)  # numpy; full attention within each frame
        for i in encoder.block_indices:
            hidden = encoder.blocks.layers[str(i)](hidden, cos, sin, frames)
        merged = encoder.downsample(encoder.blocks.final_layernorm(hidden))
        return self.projector(merged), ()


class Glm4vForConditionalGeneration(QwenVLModel):
    """GLM-4.1V: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Glm4vVisionEncoder
