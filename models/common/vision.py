"""Vision-tower pieces shared by Qwen2-VL, Qwen2.5-VL and Qwen3-VL, in the mm layout of
``docs/checkpoint-layout.md``.

Mirrors ``VisionAttention`` / ``Qwen2_5_VLVisionAttention`` / ``Qwen3VLVisionAttention``, the vision blocks and MLPs,
``VisionRotaryEmbedding``, ``PatchMerger`` / ``Qwen3VLVisionPatchMerger`` of transformers' ``modeling_qwen2_vl.py``,
``modeling_qwen2_5_vl.py`` and ``modeling_qwen3_vl.py``. Each family's model file picks the norm and the MLP and
wires the blocks (Qwen2.5-VL adds window attention, Qwen3-VL a learned position table and deepstack mergers).
"""
import numpy as np

from mmx import nn, ops
from mmx.nn.layers import Embedding, Linear


class VisionAttention(nn.Module):
    """Bidirectional attention within segments (frames or windows) with 2-D rotary.

    ``linear_qkv`` rows are per head h: [q_h; k_h; v_h] (the mm interleave with Hkv = Hq).
    """

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.linear_qkv = Linear(hidden_size, 3 * hidden_size)
        self.linear_proj = Linear(hidden_size, hidden_size)

    def forward(self, x, cos, sin, cu_seqlens):
        """x (T, C), cos/sin (T, D), cu_seqlens (N+1,) int32 (numpy host bounds or a tensor) → (T, C)."""
        tokens = x.shape[0]
        qkv = ops.reshape(self.linear_qkv(x), (tokens, self.num_heads, 3, self.head_dim))
        q, k, v = qkv[:, :, 0, :], qkv[:, :, 1, :], qkv[:, :, 2, :]
        q, k = ops.apply_rotary(q, cos, sin), ops.apply_rotary(k, cos, sin)
        out = ops.attention(q, k, v, causal=False, cu_seqlens=cu_seqlens)
        return self.linear_proj(ops.reshape(out, (tokens, self.num_heads * self.head_dim)))


ACTIVATIONS = {"quick_gelu": ops.quick_gelu, "gelu": ops.gelu, "silu": ops.silu,
               "gelu_pytorch_tanh": lambda x: ops.gelu(x, approximate="tanh")}


class VisionMLP(nn.Module):
    """fc1 → activation (Qwen2-VL quick_gelu, Qwen3-VL gelu_pytorch_tanh) → fc2: x (T, C) → (T, C)."""

    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"config.json: vision_config.hidden_act {hidden_act!r} is not supported; "
                             f"use one of {', '.join(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[hidden_act]
        self.linear_fc1 = Linear(hidden_size, intermediate_size)
        self.linear_fc2 = Linear(intermediate_size, hidden_size)

    def forward(self, x):
        return self.linear_fc2(self.activation(self.linear_fc1(x)))


class VisionBlock(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)); the norm and the MLP are the family's. x (T, C) → (T, C)."""

    def __init__(self, input_layernorm, self_attention, pre_mlp_layernorm, mlp):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attention = self_attention
        self.pre_mlp_layernorm = pre_mlp_layernorm
        self.mlp = mlp

    def forward(self, x, cos, sin, cu_seqlens):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, cu_seqlens)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class _ProjectorMLP(nn.Module):
    def __init__(self, merged_size, out_size):
        super().__init__()
        self.linear_fc1 = Linear(merged_size, merged_size)
        self.linear_fc2 = Linear(merged_size, out_size)

    def forward(self, x):
        return self.linear_fc2(ops.gelu(self.linear_fc1(x)))


class PatchMerger(nn.Module):
    """norm → concatenate each merge x merge block of patches → Linear → GELU → Linear.

    x (T, C) with T a multiple of merge**2 (blocks contiguous) → (T / merge**2, out_size). ``postshuffle_norm``
    (Qwen3-VL's deepstack mergers): the norm runs over the concatenated merge**2 * C features instead.
    """

    def __init__(self, layernorm, hidden_size, out_size, spatial_merge_size, postshuffle_norm=False):
        super().__init__()
        self.merged_size = hidden_size * spatial_merge_size ** 2
        self.postshuffle_norm = postshuffle_norm
        self.layernorm = layernorm
        self.encoder = _ProjectorMLP(self.merged_size, out_size)

    def forward(self, x):
        if self.postshuffle_norm:
            return self.encoder(self.layernorm(ops.reshape(x, (-1, self.merged_size))))
        return self.encoder(ops.reshape(self.layernorm(x), (-1, self.merged_size)))


class PatchEmbedHolder(nn.Module):
    """``patch_embed.proj``: the Conv3d patch embedding (mmx.nn.PatchEmbed), named like HF's."""

    def __init__(self, vision):
        super().__init__()
        self.proj = nn.PatchEmbed(vision.in_channels, vision.hidden_size,
                                  (vision.temporal_patch_size, vision.patch_size, vision.patch_size),
                                  bias=vision.patch_embed_bias)


class BlockStack(nn.Module):
    """``blocks.layers["{i}"]``: the vision blocks this stage holds, keyed by global index; GLM-4.1V's norm after
    the last block is ``blocks.final_layernorm`` (MindSpeed-MM's name), when given."""

    def __init__(self, blocks, final_layernorm=None):
        super().__init__()
        self.layers = nn.ModuleDict(blocks)
        if final_layernorm is not None:
            self.final_layernorm = final_layernorm


class VisionTower(nn.Module):
    """``image_encoder.encoder``: the patch embedding and, when the config has one, the learned position table
    ``pos_embed`` (first stage), and this stage's blocks.

    ``make_block(i)`` builds the family's block ``i`` (its norm, MLP and attention).
    """

    def __init__(self, vision, block_indices, first, make_block):
        super().__init__()
        self.block_indices = tuple(block_indices)
        if first:
            self.patch_embed = PatchEmbedHolder(vision)
            if vision.num_position_embeddings:
                self.pos_embed = Embedding(vision.num_position_embeddings, vision.hidden_size)
        self.blocks = BlockStack({str(i): make_block(i) for i in self.block_indices})


def resampled_position_table(table, indices, weights, dtype):
    """A learned position table resampled per patch: ``sum_k table[indices[:, k]] * weights[:, k]`` in float32
    (as HF computes it), cast to ``dtype``. table: an Embedding (side * side, C); indices / weights (T, taps) numpy
    (positions.vision_interpolation / vision_bicubic_interpolation) → (T, C)."""
    taps = ops.cast(table(ops.tensor(indices)), ops.float32) * ops.unsqueeze(ops.tensor(weights), -1)
    return ops.cast(ops.sum(taps, dim=1), dtype)


def vision_rotary(position_ids, vision):
    """2-D rotary tables of the patches: position_ids (T, 2) numpy (row, column) → cos, sin (T, head_dim).

    The first half of each rotated half-dimension uses the row, the second the column (HF recomposition
    ``cat(freq_h, freq_w)`` repeated twice).
    """
    spatial = vision.head_dim // 2
    inv_freq = 1.0 / (vision.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    positions = ops.cast(ops.tensor(np.asarray(position_ids, np.int64)), ops.float32)       # (T, 2)
    angles = ops.unsqueeze(positions, -1) * ops.reshape(ops.tensor(inv_freq.astype(np.float32)), (1, 1, -1))
    angles = ops.reshape(angles, (positions.shape[0], -1))                                 # (T, D/2)
    angles = ops.cat([angles, angles], dim=-1)
    return ops.cos(angles), ops.sin(angles)
