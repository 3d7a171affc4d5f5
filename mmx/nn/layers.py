"""Layers written once against mmx.ops; they run on whichever backend the process uses."""
from mmx import nn, ops


class Linear(nn.Module):
    """y = x @ weight.T + bias: x (..., in_features) → (..., out_features); plus LoRA adapters once
    ``mmx.nn.lora.add_lora`` gave it some (``lora_pieces`` non-empty)."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(ops.zeros((out_features, in_features), dtype))
        self.bias = nn.Parameter(ops.zeros((out_features,), dtype)) if bias else None
        self.lora_pieces = ()

    def forward(self, x):
        y = ops.linear(x, self.weight, self.bias)
        if self.lora_pieces:
            from mmx.nn.lora import lora_delta
            y = y + lora_delta(self, x)
        return y


class Embedding(nn.Module):
    """Token ids (any shape) → ids.shape + (embedding_dim,)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(ops.zeros((num_embeddings, embedding_dim), dtype))

    def forward(self, ids):
        return ops.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """RMS norm over the last dimension (HF Qwen2RMSNorm numerics): x (..., C) → (..., C)."""

    def __init__(self, hidden_size, eps=1e-6, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(ops.ones((hidden_size,), dtype))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension: x (..., C) → (..., C)."""

    def __init__(self, hidden_size, eps=1e-6, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(ops.ones((hidden_size,), dtype))
        self.bias = nn.Parameter(ops.zeros((hidden_size,), dtype))

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class PatchEmbed(nn.Module):
    """Conv3d with stride == kernel over flattened patches, computed as one matmul.

    x (N, C * kT * kH * kW) — the flattened patches the Qwen-VL image processors emit, channel-major — → (N, E).
    The weight keeps the Conv3d shape (E, C, kT, kH, kW) so checkpoints read like the HF ones.
    """

    def __init__(self, in_channels, embed_dim, kernel_size, bias=False, dtype=None):
        super().__init__()
        temporal, height, width = kernel_size
        self.patch_dim = in_channels * temporal * height * width
        self.embed_dim = embed_dim
        self.weight = nn.Parameter(ops.zeros((embed_dim, in_channels, temporal, height, width), dtype))
        self.bias = nn.Parameter(ops.zeros((embed_dim,), dtype)) if bias else None

    def forward(self, x):
        weight = ops.reshape(self.weight, (self.embed_dim, self.patch_dim))
        return ops.linear(ops.cast(x, weight.dtype), weight, self.bias)
