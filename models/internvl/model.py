"""InternVL3, written once against mmx.nn / mmx.ops; the Qwen2 LLM and the VLM wrapper are shared.

Mirrors transformers' ``models/internvl/modeling_internvl.py`` (``InternVLForConditionalGeneration``)::

    InternVLForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                          InternVLVisionEncoder: every tile (images and video frames alike) of
    │   │                                      pixel_values (N_tiles, 3, S, S), in prompt order
    │   ├── encoder.embeddings.patch_embedding Conv2d (with bias), kernel = stride = patch, as one matmul
    │   ├── + class_embedding, position_embedding   CLS token first; the learned (1 + side**2, C) table, resampled
    │   │                                      bicubically when the tile grid is not side x side (HF
    │   │                                      interpolate_pos_encoding: F.interpolate, align_corners=False)
    │   ├── encoder.encoder.layers["{i}"]      norm → attention over the tile (q/k/v rows of linear_qkv: [q; k; v];
    │   │                                      6B: q_layernorm / k_layernorm over the full width) → * ls1 → + x →
    │   │                                      norm → fc1 / GELU / fc2 → * ls2 → + x   (LayerNorm or RMSNorm)
    │   ├── drop the CLS token, pixel shuffle  (N, side, side, C) → (N, side/2 * side/2, 4C) (HF pixel_shuffle, the
    │   │                                      original ps_version v2)
    │   └── projector                          LayerNorm (eps 1e-5) → linear_fc1 → GELU → linear_fc2  (HF mlp1)
    └── text_decoder                           the Qwen2 LLM (models/common/text.py) with 1-D RoPE: the three mRoPE
                                               position rows are equal, so every section rotates by the token index
                                               (mask cumsum - 1, as transformers' generate computes it)
"""
import numpy as np

from mmx import nn, ops
from mmx.models.common.positions import _bicubic_taps
from mmx.models.common.vision import VisionMLP
from mmx.models.common.vlm import QwenVLModel
from mmx.nn.layers import LayerNorm, Linear, RMSNorm


def _norm(vision, size):
    return (RMSNorm if vision.norm_type == "rms_norm" else LayerNorm)(size, vision.rms_norm_eps)


class InternVisionAttention(nn.Module):
    """Bidirectional attention over each tile. ``linear_qkv`` rows are [q; k; v] (the original ``attn.qkv``, as
    MindSpeed-MM keeps it); 6B: RMSNorm (eps 1e-6) of q and k over all heads before the split.
    x (N, S, C) → (N, S, C)."""

    def __init__(self, vision):
        super().__init__()
        width = vision.hidden_size
        self.num_heads, self.head_dim, self.width = vision.num_heads, width // vision.num_heads, width
        self.linear_qkv = Linear(width, 3 * width, bias=vision.qkv_bias)
        self.linear_proj = Linear(width, width)
        self.qk_norm = vision.qk_norm
        if vision.qk_norm:
            self.q_layernorm = RMSNorm(width, 1e-6)
            self.k_layernorm = RMSNorm(width, 1e-6)

    def forward(self, x):
        tiles, length = x.shape[0], x.shape[1]
        qkv = self.linear_qkv(x)
        q, k, v = qkv[..., :self.width], qkv[..., self.width:2 * self.width], qkv[..., 2 * self.width:]
        if self.qk_norm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        shape = (tiles, length, self.num_heads, self.head_dim)
        out = ops.attention(ops.reshape(q, shape), ops.reshape(k, shape), ops.reshape(v, shape), causal=False)
        return self.linear_proj(ops.reshape(out, (tiles, length, self.width)))


class InternVisionLayer(nn.Module):
    """HF ``InternVLVisionLayer``: x + ls1 * attn(norm(x)), then + ls2 * mlp(norm(.)). x (N, S, C) → (N, S, C)."""

    def __init__(self, vision):
        super().__init__()
        self.input_layernorm = _norm(vision, vision.hidden_size)
        self.self_attention = InternVisionAttention(vision)
        self.pre_mlp_layernorm = _norm(vision, vision.hidden_size)
        self.mlp = VisionMLP(vision.hidden_size, vision.intermediate_size, "gelu")
        self.ls1 = nn.Parameter(ops.ones((vision.hidden_size,)))
        self.ls2 = nn.Parameter(ops.ones((vision.hidden_size,)))

    def forward(self, x):
        x = x + self.ls1 * self.self_attention(self.input_layernorm(x))
        return x + self.ls2 * self.mlp(self.pre_mlp_layernorm(x))


class InternVisionEmbeddings(nn.Module):
    """CLS token, Conv2d patch embedding and the learned position table (HF ``InternVLVisionEmbeddings``)."""

    def __init__(self, vision):
        super().__init__()
        width, patch = vision.hidden_size, vision.patch_size
        self.width, self.patch, self.side = width, patch, vision.image_size // patch
        self.class_embedding = nn.Parameter(ops.zeros((1, 1, width)))
        self.patch_embedding = nn.Module()
        self.patch_embedding.weight = nn.Parameter(ops.zeros((width, vision.in_channels, patch, patch)))
        self.patch_embedding.bias = nn.Parameter(ops.zeros((width,)))
        self.position_embedding = nn.Parameter(ops.zeros((1, 1 + self.side ** 2, width)))

    def positions(self, grid):
        """The table for a grid x grid tile: (1 + grid**2, C); resampled bicubically when grid != side."""
        table = ops.reshape(self.position_embedding, (1 + self.side ** 2, self.width))
        if grid == self.side:
            return table
        taps, weights = _bicubic_taps(np.arange(grid), np.full(grid, grid), self.side)          # per axis (grid, 4)
        index = (taps[:, None, :, None] * self.side + taps[None, :, None, :]).reshape(grid * grid, 16) + 1
        weight = (weights[:, None, :, None] * weights[None, :, None, :]).reshape(grid * grid, 16)
        rows = ops.index_select(table, 0, ops.tensor(index.reshape(-1).astype(np.int64)))
        rows = ops.cast(ops.reshape(rows, (grid * grid, 16, self.width)), ops.float32)
        patches = ops.sum(rows * ops.unsqueeze(ops.tensor(weight.astype(np.float32)), -1), dim=1)
        return ops.cat([table[:1], ops.cast(patches, table.dtype)], dim=0)

    def forward(self, pixel_values):
        """pixel_values (N, 3, H, W) → (N, 1 + (H / patch)**2, C)."""
        tiles, channels, height, width = pixel_values.shape
        grid_h, grid_w, patch = height // self.patch, width // self.patch, self.patch
        if grid_h != grid_w:
            raise ValueError(f"pixel_values tiles are {height}x{width}; InternVL tiles are square (use the "
                             f"checkpoint's GotOcr2 image processor)")
        patches = ops.reshape(pixel_values, (tiles, channels, grid_h, patch, grid_w, patch))
        patches = ops.reshape(ops.permute(patches, (0, 2, 4, 1, 3, 5)), (tiles * grid_h * grid_w, -1))
        weight = ops.reshape(self.patch_embedding.weight, (self.width, -1))
        embedded = ops.reshape(ops.linear(ops.cast(patches, weight.dtype), weight, self.patch_embedding.bias),
                               (tiles, grid_h * grid_w, self.width))
        cls = ops.expand(self.class_embedding, (tiles, 1, self.width))
        return ops.cat([cls, embedded], dim=1) + ops.unsqueeze(self.positions(grid_h), 0)


class _Layers(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleDict(layers)


class InternVisionTower(nn.Module):
    """``image_encoder.encoder``: embeddings (first stage) and this stage's layers (``encoder.layers``)."""

    def __init__(self, vision, stage):
        super().__init__()
        self.block_indices = tuple(stage.vision_layers)
        if stage.first:
            self.embeddings = InternVisionEmbeddings(vision)
        self.encoder = _Layers({str(i): InternVisionLayer(vision) for i in self.block_indices})


class InternVLProjector(nn.Module):
    """HF ``InternVLMultiModalProjector`` (original ``mlp1``): LayerNorm(4C, eps 1e-5) → Linear → GELU → Linear."""

    def __init__(self, merged, out):
        super().__init__()
        self.norm = LayerNorm(merged, 1e-5)
        self.linear_fc1 = Linear(merged, out)
        self.linear_fc2 = Linear(out, out)

    def forward(self, x):
        return self.linear_fc2(ops.gelu(self.linear_fc1(self.norm(x))))


def pixel_shuffle(x):
    """HF ``InternVLModel.pixel_shuffle`` with scale 0.5: x (N, s, s, C) → (N, s/2 * s/2, 4C)."""
    tiles, side, _, width = x.shape
    x = ops.transpose(ops.reshape(x, (tiles, side, side // 2, 2 * width)), 1, 2)
    x = ops.transpose(ops.reshape(x, (tiles, side // 2, side // 2, 4 * width)), 1, 2)
    return ops.reshape(x, (tiles, (side // 2) ** 2, 4 * width))


class InternVLVisionEncoder(nn.Module):
    """Tiles → LLM embeddings (N_tiles * tokens per tile, C_llm), in tile order."""

    def __init__(self, vision, stage):
        super().__init__()
        self.vision = vision
        self.encoder = InternVisionTower(vision, stage)
        if stage.first:
            self.projector = InternVLProjector(4 * vision.hidden_size, vision.out_hidden_size)

    def forward(self, pixel_values, grid_thw=None):
        """pixel_values (N, 3, H, W) float → ((N * (H / patch / 2)**2, C_llm), no deepstack levels)."""
        hidden = self.encoder.embeddings(pixel_values)
        for i in self.encoder.block_indices:
            hidden = self.encoder.encoder.layers[str(i)](hidden)
        tiles, side = hidden.shape[0], int(round((hidden.shape[1] - 1) ** 0.5))
        shuffled = pixel_shuffle(ops.reshape(hidden[:, 1:], (tiles, side, side, hidden.shape[-1])))
        features = self.projector(shuffled)
        return ops.reshape(features, (-1, features.shape[-1])), ()


class InternVLForConditionalGeneration(QwenVLModel):
    """InternVL3: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward. Images and video
    frames are all tiles in ``pixel_values`` at the ``<IMG_CONTEXT>`` tokens (no grids); positions are 1-D
    (``config.positions_1d``: rope_index gives every real token its index in its sample, padding 0)."""

    image_encoder_class = InternVLVisionEncoder

    def _insert(self, hidden, deepstack, slots, pixels, grid_thw, token_id, kind, decoding=False):
        if kind == "image" and pixels is not None and grid_thw is None:
            grid_thw = np.zeros((0, 3), np.int64)        # InternVL tiles carry no grid
        return super()._insert(hidden, deepstack, slots, pixels, grid_thw, token_id, kind, decoding)

    def _positions(self, *args, **kwargs):
        """QwenVLModel's positions, refused past the range where the checkpoint's dynamic RoPE is plain RoPE."""
        positions = super()._positions(*args, **kwargs)
        limit = self.config.plain_rope_positions
        if limit and positions.size and int(positions.max()) >= limit:
            raise ValueError(f"positions reach {int(positions.max()) + 1} but config.json's text_config uses "
                             f"'dynamic' rope scaling, which changes RoPE past max_position_embeddings {limit} (not "
                             f"implemented in mmx); keep cutoff_len / prompt + max_new_tokens within {limit}")
        return positions
