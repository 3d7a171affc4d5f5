"""Attention kernels on MindSpore: each takes an :class:`AttentionCall` and returns the output in q's layout and dtype.

Semantics (the contract, ``mmx.ops.attention``): causal is bottom-right aligned (query i sees key j when
``j <= i + Sk - Sq``), ``window`` keeps ``i + Sk - Sq - j < window``, padded keys are never seen, and a query row
that sees no key returns zeros. Varlen sequences attend only within themselves (Sq == Sk per sequence).

Masks that depend only on integer metadata (lengths, causal, window) are built with numpy on the host and cached;
the key padding mask is combined on the device.
"""
import functools

import numpy as np
import mindspore
from mindspore import Tensor
from mindspore import ops as P

import mmx.backends.mindspore as ms_backend
from mmx.backends.mindspore import ops
from mmx.backends.mindspore.kernels import ATTENTION, register

_HALF = (mindspore.float16, mindspore.bfloat16)
_bmm_nt = P.BatchMatMul(transpose_b=True)


class _Softmax(mindspore.nn.Cell):
    """Softmax over the last axis with the gradient written out, ``p * g - p * sum(p * g)`` (the row sum tiled, not
    broadcast): MindSpore 2.10's CPU SoftmaxGrad makes a (2, 6, 510, 510) softmax's fwd+bwd 100 ms, this 60
    (gradients within 1.5e-8)."""

    def construct(self, x):
        return P.softmax(x, -1)

    def bprop(self, x, out, dout):
        weighted = out * dout
        return (weighted - out * ops._full(P.sum(weighted, -1, True), out.shape),)  # noqa: SLF001


_softmax = _Softmax()


def _causal_visible(query_len, key_len, window):
    """(Sq, Sk) numpy bool, true where query i may see key j (bottom-right causal, optional window)."""
    query_pos = np.arange(query_len)[:, None] + (key_len - query_len)
    key_pos = np.arange(key_len)[None, :]
    visible = key_pos <= query_pos
    if window is not None:
        visible &= query_pos - key_pos < window
    return visible


@functools.lru_cache(maxsize=8)  # a forward reuses a few masks (LLM causal, vision full/window); each is Sq*Sk*9 bytes
def _host_mask(query_len, key_len, causal, window, seqlens):
    """(additive float32 (1, 1, Sq, Sk), visible bool (1, 1, Sq, Sk), row scale float32 (1, 1, Sq, 1)) Tensors:
    None when every key is visible (the row scale: when every query sees some key). ``seqlens`` (tuple or None)
    makes the mask block-diagonal over the packed sequences."""
    visible = np.ones((query_len, key_len), bool)
    if seqlens is not None:
        segment = np.repeat(np.arange(len(seqlens)), seqlens)
        visible &= segment[:, None] == segment[None, :]
    if causal:
        visible &= _causal_visible(query_len, key_len, window)
    if visible.all():
        return None, None, None
    additive = np.where(visible, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    sees = visible.any(-1)
    row_scale = None if sees.all() else Tensor(sees.astype(np.float32)[None, None, :, None])
    return Tensor(additive), Tensor(visible[None, None]), row_scale


def visible_mask(query_len, key_len, causal, window, key_padding_mask):
    """Bool (B or 1, 1, Sq, Sk), true where a query may see a key; None when every key is visible."""
    mask = Tensor(_causal_visible(query_len, key_len, window)[None, None]) if causal else None
    if key_padding_mask is not None:
        padding = P.cast(key_padding_mask, mindspore.bool_).reshape(key_padding_mask.shape[0], 1, 1, key_len)
        mask = padding if mask is None else P.logical_and(mask, padding)
    return mask


# ----------------------------------------------------------------------------------------------------------------
# eager: the reference (float32, one sequence at a time, KV heads repeated), every option on every device
# ----------------------------------------------------------------------------------------------------------------

def _eager_dense(q, k, v, causal, window, key_padding_mask, scale):
    groups = q.shape[2] // k.shape[2]
    query = P.swapaxes(P.cast(q, mindspore.float32), 1, 2)                                  # (B, Hq, Sq, D)
    key = P.swapaxes(ops.repeat_interleave(P.cast(k, mindspore.float32), groups, 2), 1, 2)  # (B, Hq, Sk, D)
    value = P.swapaxes(ops.repeat_interleave(P.cast(v, mindspore.float32), groups, 2), 1, 2)
    scores = P.matmul(query, P.swapaxes(key, 2, 3)) * scale                                # (B, Hq, Sq, Sk)
    mask = visible_mask(q.shape[1], k.shape[1], causal, window, key_padding_mask)
    if mask is not None:
        # A finite fill keeps rows with no visible key finite (uniform); they are zeroed after the softmax.
        scores = P.masked_fill(scores, P.logical_not(mask), float(np.finfo(np.float32).min))
    probs = P.softmax(scores, -1)
    if mask is not None:
        probs = probs * P.cast(P.any(mask, -1, True), mindspore.float32)
    return ops._back(P.swapaxes(P.matmul(probs, value), 1, 2), q.dtype)


@register(ATTENTION, "eager", available=lambda: True)
def eager(call):
    if not call.varlen:
        return _eager_dense(call.q, call.k, call.v, call.causal, call.window, call.key_padding_mask, call.scale)
    outs, start = [], 0
    q, k, v = (P.cast(t, mindspore.float32) for t in (call.q, call.k, call.v))  # bf16 slices have no CPU gradient
    for length in call.seqlens:
        piece = [P.expand_dims(t[start:start + length], 0) for t in (q, k, v)]
        outs.append(_eager_dense(*piece, call.causal, call.window, None, call.scale)[0])
        start += length
    return ops._back(P.cat(tuple(outs), 0), call.q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# math: the fast CPU kernel — one batched matmul pair over all heads (packed sequences batched by length)
# ----------------------------------------------------------------------------------------------------------------

_MAX_LENGTH_GROUPS = 8   # more distinct lengths in one packed call: one block-diagonal matmul instead


@register(ATTENTION, "math", available=lambda: True)
def math(call):
    q, k, v = ops._compute(call.q), ops._compute(call.k), ops._compute(call.v)
    if not call.varlen:
        out = _math_dense(q, k, v, call.causal, call.window, call.key_padding_mask, call.scale)
    elif len(set(call.seqlens)) <= _MAX_LENGTH_GROUPS:
        out = _math_by_length(q, k, v, call)
    else:   # packed sequences as one batch row with a block-diagonal mask
        out = _math_dense(P.expand_dims(q, 0), P.expand_dims(k, 0), P.expand_dims(v, 0), call.causal, call.window,
                          None, call.scale, tuple(call.seqlens))[0]
    return ops._back(out, call.q.dtype)


def _math_by_length(q, k, v, call):
    """Packed sequences (T, H, D) attended as batches of equal-length sequences: those of one length are stacked
    (N, L, H, D) and need no block-diagonal mask, so each costs L² scores instead of T × L. bench/train.py's vision
    tower (two 1024-patch images, 16-patch windows, 2 heads; 2 CPU cores) fwd+bwd: window attention 0.63 → 0.055 s,
    per-image attention 0.63 → 0.29 s. Sequences of different lengths are grouped through one token permutation
    (a gather) and put back by its inverse."""
    seqlens = [int(n) for n in call.seqlens]
    lengths = sorted(set(seqlens))

    def attend(q, k, v, length):
        def fold(t):
            return P.reshape(t, (t.shape[0] // length, length) + tuple(t.shape[1:]))
        out = _math_dense(fold(q), fold(k), fold(v), call.causal, call.window, None, call.scale)
        return P.reshape(out, (q.shape[0],) + tuple(out.shape[2:]))

    if len(lengths) == 1:
        return attend(q, k, v, lengths[0])
    starts = np.concatenate([[0], np.cumsum(seqlens)[:-1]])
    order = np.concatenate([np.arange(starts[i], starts[i] + n) for length in lengths
                            for i, n in enumerate(seqlens) if n == length])
    index = Tensor(order.astype(np.int32))
    q, k, v = (P.gather(t, index, 0) for t in (q, k, v))
    outs, offset = [], 0
    for length in lengths:
        size = length * seqlens.count(length)
        outs.append(attend(q[offset:offset + size], k[offset:offset + size], v[offset:offset + size], length))
        offset += size
    return P.gather(P.cat(tuple(outs), 0), Tensor(np.argsort(order).astype(np.int32)), 0)


def _math_dense(q, k, v, causal, window, key_padding_mask, scale, seqlens=None):
    """One batched matmul pair over all heads: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) → (B, Sq, Hq, D);
    ``seqlens``: the row is that many packed sequences (a block-diagonal mask)."""
    batch, query_len, heads, dim = q.shape
    key_len, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    # Query heads g*groups .. g*groups+groups-1 share KV head g: fold them into the rows of one matmul (no KV copy).
    query = P.reshape(P.swapaxes(q, 1, 2), (batch, kv_heads, groups * query_len, dim))
    key, value = P.swapaxes(k, 1, 2), P.swapaxes(v, 1, 2)                                # (B, Hkv, Sk, D)
    scores = P.reshape(_bmm_nt(query, key), (batch, heads, query_len, key_len))
    scores = ops._fp32(scores) * scale
    additive, visible, row_scale = _host_mask(query_len, key_len, causal, window, seqlens)
    if additive is not None:
        scores = scores + ops._full(additive, scores.shape)
    if key_padding_mask is not None:
        padding = P.cast(key_padding_mask, mindspore.bool_).reshape(batch, 1, 1, key_len)
        scores = P.masked_fill(scores, P.logical_not(padding), float(np.finfo(np.float32).min))
        visible = padding if visible is None else P.logical_and(visible, padding)
        row_scale = P.cast(P.any(visible, -1, True), mindspore.float32)
    probs = _softmax(scores)
    if row_scale is not None:
        probs = probs * ops._full(row_scale, probs.shape)  # rows that see no key return zeros
    probs = P.reshape(ops._back(probs, v.dtype), (batch, kv_heads, groups * query_len, key_len))
    return P.swapaxes(P.reshape(P.matmul(probs, value), (batch, heads, query_len, dim)), 1, 2)


# ----------------------------------------------------------------------------------------------------------------
# flash_attention_score: mindspore.ops.flash_attention_score on Ascend (bf16/fp16); its attn_mask is true where NOT
# visible
# ----------------------------------------------------------------------------------------------------------------

_COMPRESSED_MASK_SIZE = 2048  # sparse_mode 3 takes a compressed (2048, 2048) upper-triangular mask


@functools.lru_cache(maxsize=1)
def _compressed_causal_mask():
    return Tensor(np.triu(np.ones((_COMPRESSED_MASK_SIZE, _COMPRESSED_MASK_SIZE), bool), 1))


def _flash_supports(call):
    if call.q.dtype not in _HALF:
        return f"flash_attention_score computes in bfloat16/float16, not {call.q.dtype}"
    if call.q.shape[-1] % 16 or call.q.shape[-1] > 512:
        return f"flash_attention_score needs a head dim that is a multiple of 16 up to 512, got {call.q.shape[-1]}"
    if call.varlen and call.window is not None:
        return "flash_attention_score here has no varlen sliding window"
    return None


@register(ATTENTION, "flash_attention_score", available=ms_backend.on_ascend, supports=_flash_supports)
def flash_attention_score(call):
    common = dict(head_num=call.q.shape[-2], scalar_value=call.scale, keep_prob=1.0)
    if call.varlen:
        # TND layout; actual_seq_qlen are the cumulative ends (cu_seqlens[1:]); sparse mode 3 = causal per sequence.
        ends = [int(end) for end in np.cumsum(call.seqlens)]
        masking = dict(attn_mask=_compressed_causal_mask(), sparse_mode=3) if call.causal else {}
        return P.flash_attention_score(call.q, call.k, call.v, actual_seq_qlen=ends, actual_seq_kvlen=ends,
                                       input_layout="TND", **masking, **common)
    if call.causal and call.window is None and call.key_padding_mask is None:
        return P.flash_attention_score(call.q, call.k, call.v, attn_mask=_compressed_causal_mask(), sparse_mode=3,
                                       input_layout="BSND", **common)
    mask = visible_mask(call.q.shape[1], call.k.shape[1], call.causal, call.window, call.key_padding_mask)
    if mask is None:
        return P.flash_attention_score(call.q, call.k, call.v, input_layout="BSND", **common)
    seen = P.any(mask, -1, True)                                                 # (B|1, 1, Sq, 1)
    discard = P.logical_not(P.logical_or(mask, P.logical_not(seen)))
    out = P.flash_attention_score(call.q, call.k, call.v, attn_mask=discard, sparse_mode=0, input_layout="BSND",
                                  **common)
    seen = P.expand_dims(seen[:, 0], -1)                                         # (B|1, Sq, 1, 1) for BSND
    return P.where(seen, out, P.zeros((), out.dtype))
