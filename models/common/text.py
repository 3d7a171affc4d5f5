"""The Qwen2 / Qwen3 / GLM-4 language model with multimodal RoPE, shared by Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
GLM-4.1V and GLM-4.5V.

Mirrors ``Qwen2VLTextModel`` / ``Qwen2_5_VLTextModel`` / ``Qwen3VLTextModel`` / ``Glm4vTextModel`` (+ ``lm_head``)
in transformers' ``models/qwen2_vl/modeling_qwen2_vl.py``, ``models/qwen2_5_vl/modeling_qwen2_5_vl.py``,
``models/qwen3_vl/modeling_qwen3_vl.py`` and ``models/glm4v/modeling_glm4v.py``, in the mm layout of
``docs/checkpoint-layout.md``::

    TextDecoder (state-dict prefix text_decoder.)
    ├── embedding.word_embeddings            ids (B, S) → (B, S, C)
    ├── decoder.layers["{j}"]  DecoderLayer  (global layer index j)
    │   ├── input_layernorm                  RMSNorm
    │   ├── self_attention                   fused qkv (per-KV-group interleave; Qwen2 with biases) → Qwen3:
    │   │                                    q_layernorm / k_layernorm per head → mRoPE → causal GQA → linear_proj
    │   │                                    (GLM: mRoPE on the first rotary_dim dims, GPT-J pairs)
    │   ├── (GLM: post_self_attn_layernorm   RMSNorm of the attention output, before the residual add)
    │   ├── pre_mlp_layernorm                RMSNorm
    │   ├── mlp                              linear_fc1 = [gate; up] → silu(gate) * up → linear_fc2, or in the
    │   │                                    MoE layers of Qwen3-VL-MoE a SparseMoeBlock, of GLM-4.5V a
    │   │                                    SharedExpertMoeBlock (models/common/moe.py: moe_block)
    │   └── (GLM: post_mlp_layernorm         RMSNorm of the MLP output, before the residual add)
    ├── (Qwen3-VL deepstack: after layer j < levels, visual features of vision level j are added at the
    │    image/video positions)
    ├── decoder.final_layernorm              RMSNorm
    └── output_layer                         (absent when tie_word_embeddings: the embedding matrix is reused)
"""
import numpy as np

from mmx import nn, ops
from mmx.models.common.moe import moe_block
from mmx.nn.layers import Embedding, Linear, RMSNorm


class GatedMLP(nn.Module):
    """SwiGLU MLP with fused gate/up: x (..., C) → linear_fc1 (..., 2F) = [gate | up] → (..., C)."""

    def __init__(self, hidden_size, intermediate_size, bias):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.linear_fc1 = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.linear_fc2 = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x):
        gate_up = self.linear_fc1(x)
        gate, up = gate_up[..., :self.intermediate_size], gate_up[..., self.intermediate_size:]
        return self.linear_fc2(ops.silu(gate) * up)


class SelfAttention(nn.Module):
    """Causal GQA self-attention with mRoPE.

    ``linear_qkv`` rows are grouped per KV head g: [q heads g*r .. g*r+r-1; k head g; v head g] (r = Hq / Hkv), so
    query head h uses KV head h // r, as in HF's ``repeat_kv``.
    """

    def __init__(self, config):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.group = self.num_heads // self.num_kv_heads
        self.linear_qkv = Linear(config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
                                 bias=config.attention_bias)
        self.linear_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.rotary_interleaved = config.rotary_interleaved

    def forward(self, x, cos, sin, attention_mask=None, cu_seqlens=None, cache=None, layer_index=None):
        """x (B, S, C), cos/sin (B, S, rotary_dim); attention_mask (B, S_past + S) 1 = real token; cu_seqlens
        (N+1,) int32 for a packed row (B = 1); cache: a KVCache that stores this layer's keys/values → (B, S, C)."""
        batch, length = x.shape[0], x.shape[1]
        qkv = ops.reshape(self.linear_qkv(x), (batch, length, self.num_kv_heads, self.group + 2, self.head_dim))
        q = ops.reshape(qkv[:, :, :, :self.group, :], (batch, length, self.num_heads, self.head_dim))
        k, v = qkv[:, :, :, self.group, :], qkv[:, :, :, self.group + 1, :]
        if self.qk_norm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q = ops.apply_rotary(q, cos, sin, rotary_interleaved=self.rotary_interleaved)
        k = ops.apply_rotary(k, cos, sin, rotary_interleaved=self.rotary_interleaved)
        if cache is not None:
            k, v = cache.update(layer_index, k, v)
        if cu_seqlens is not None:
            out = ops.attention(q[0], k[0], v[0], causal=True, cu_seqlens=cu_seqlens)
        else:
            out = ops.attention(q, k, v, causal=True, key_padding_mask=attention_mask)
        return self.linear_proj(ops.reshape(out, (batch, length, self.num_heads * self.head_dim)))


class DecoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then + mlp(norm(.)). x (B, S, C) → (B, S, C).

    Global layer ``layer_index`` in ``config.moe_layers`` gets the sparse MoE block instead of the dense MLP; its
    router logits (B*S, E) are appended to ``router_logits`` when a list is given (the load-balancing loss).
    """

    def __init__(self, config, layer_index=None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attention = SelfAttention(config)
        self.pre_mlp_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.moe = layer_index in config.moe_layers
        self.mlp = (moe_block(config) if self.moe else
                    GatedMLP(config.hidden_size, config.intermediate_size, bias=False))
        self.sandwich_norms = config.sandwich_norms
        if self.sandwich_norms:
            self.post_self_attn_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.post_mlp_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, attention_mask=None, cu_seqlens=None, cache=None, layer_index=None,
                router_logits=None):
        attention = self.self_attention(self.input_layernorm(x), cos, sin, attention_mask, cu_seqlens, cache,
                                        layer_index)
        x = x + (self.post_self_attn_layernorm(attention) if self.sandwich_norms else attention)
        if not self.moe:
            out = self.mlp(self.pre_mlp_layernorm(x))
        else:
            out, logits = self.mlp(self.pre_mlp_layernorm(x))
            if router_logits is not None:
                router_logits.append(logits)
        return x + (self.post_mlp_layernorm(out) if self.sandwich_norms else out)


class _Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)


class _Decoder(nn.Module):
    def __init__(self, config, layer_indices, last):
        super().__init__()
        self.layers = nn.ModuleDict({str(j): DecoderLayer(config, j) for j in layer_indices})
        if last:
            self.final_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class TextDecoder(nn.Module):
    """The LLM, or the part of it one pipeline stage holds (``layer_indices``, ``first``, ``last``)."""

    def __init__(self, config, layer_indices, first=True, last=True):
        super().__init__()
        self.config, self.first, self.last = config, first, last
        self.layer_indices = tuple(layer_indices)
        if first:
            self.embedding = _Embedding(config)
        self.decoder = _Decoder(config, self.layer_indices, last)
        # Tied embeddings: the full model reuses the embedding matrix. A last stage without the embedding holds a
        # copy as output_layer (kept equal by the trainer), like Megatron's pipeline stages.
        if last and (not config.tie_word_embeddings or not first):
            self.output_layer = Linear(config.hidden_size, config.vocab_size, bias=False)

    def embed(self, input_ids):
        """input_ids (B, S) backend int tensor → (B, S, C)."""
        return self.embedding.word_embeddings(input_ids)

    def rotary(self, position_ids):
        """position_ids (3, B, S) numpy int → cos, sin (B, S, rotary_dim) float32 (multimodal RoPE; GLM rotates
        the first rotary_dim of each head's dims, in GPT-J pairs)."""
        dim = self.config.rotary_dim
        inv_freq = 1.0 / (self.config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        return ops.rotary_cos_sin(ops.tensor(np.asarray(position_ids, np.int64)),
                                  ops.tensor(inv_freq.astype(np.float32)), list(self.config.mrope_section),
                                  self.config.mrope_interleaved, self.config.rotary_interleaved)

    def forward(self, hidden, cos, sin, attention_mask=None, cu_seqlens=None, cache=None, logits_to_keep=0,
                logits_positions=None, deepstack=(), router_logits=None, loss_targets=None, loss_weights=None):
        """hidden (B, S, C) → this stage's layers → (B, S, C); on the last stage → float32 logits (B, S, V), or of
        the last ``logits_to_keep`` positions only (B, K, V) (generation needs the last one; 0 keeps all), or of
        ``logits_positions`` only (N,) numpy int, flat indices into the B × S positions → (N, V) (training needs
        the supervised ones: with a 150k vocabulary the output layer is most of a small model's FLOPs).

        ``deepstack`` (Qwen3-VL): per level l a (B, S, C) tensor, the level's visual features at the image/video
        positions and zeros elsewhere, added after global layer l (HF ``_deepstack_process``; adding zeros leaves
        the other positions bit-identical). ``router_logits``: a list that collects each MoE layer's router logits.
        ``loss_targets`` / ``loss_weights`` (N,) tensors aligned with the output positions (training): instead of
        logits, the scalar ``sum(cross_entropy(logits, loss_targets) * loss_weights)``, computed by
        ``ops.linear_cross_entropy`` in row chunks (no (N, V) float32 logits are built).
        """
        for j in self.layer_indices:
            # the layer index only addresses the cache: without one every layer gets the same arguments, so one
            # compiled region (training.compile) serves them all instead of one specialisation per index
            hidden = self.decoder.layers[str(j)](hidden, cos, sin, attention_mask, cu_seqlens, cache,
                                                 None if cache is None else j, router_logits)
            if j < len(deepstack):
                hidden = hidden + deepstack[j]
        if not self.last:
            return hidden
        if logits_to_keep:
            hidden = hidden[:, hidden.shape[1] - logits_to_keep:]
        if logits_positions is not None:
            flat = ops.reshape(hidden, (-1, hidden.shape[-1]))
            hidden = ops.index_select(flat, 0, ops.tensor(np.asarray(logits_positions, np.int64)))
        hidden = self.decoder.final_layernorm(hidden)
        output = getattr(self, "output_layer", None)
        if loss_targets is not None and (output is None or (output.bias is None and not output.lora_pieces)):
            weight = self.embedding.word_embeddings.weight if output is None else output.weight
            flat = ops.reshape(hidden, (-1, hidden.shape[-1]))
            return ops.linear_cross_entropy(flat, weight, ops.reshape(loss_targets, (-1,)),
                                            ops.reshape(loss_weights, (-1,)))
        if loss_targets is not None:   # an output layer with adapters: its logits, then the same weighted sum
            logits = ops.cross_entropy(ops.reshape(self.output_layer(hidden), (-1, self.config.vocab_size)),
                                       ops.reshape(loss_targets, (-1,)), -100, "none")
            return ops.sum(logits * ops.reshape(loss_weights, (-1,)))
        if hasattr(self, "output_layer"):
            logits = self.output_layer(hidden)
        else:
            logits = ops.linear(hidden, self.embedding.word_embeddings.weight)
        return ops.cast(logits, ops.float32)
