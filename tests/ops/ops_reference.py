"""float64 numpy references for the mmx.ops contract, and a finite-difference gradient.

Each function mirrors the contract docstring of the op of the same name in ``mmx/ops/__init__.py``, written as
plainly as possible (loops where they make the definition obvious): these are the numbers the backends must match.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def quick_gelu(x):
    return x * sigmoid(1.702 * x)


def softmax(x, axis=-1):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def linear(x, weight, bias=None):
    out = x @ weight.T
    return out if bias is None else out + bias


def rms_norm(x, weight, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * weight


def layer_norm(x, weight, bias, eps):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) * weight + bias


def rotary_cos_sin(position_ids, inv_freq, mrope_section=None, mrope_interleaved=False, rotary_interleaved=False):
    if mrope_section is None:
        angles = position_ids[..., None].astype(np.float64) * inv_freq
    else:
        # frequency f belongs to band r (temporal, height, width) and uses position row r: contiguous bands, or
        # HF Qwen3-VL's interleave (T everywhere, then H at 1::3 below 3*h and W at 2::3 below 3*w)
        band_of_freq = np.repeat(np.arange(3), mrope_section)
        if mrope_interleaved:
            band_of_freq = np.zeros(sum(mrope_section), int)
            band_of_freq[1:3 * mrope_section[1]:3] = 1
            band_of_freq[2:3 * mrope_section[2]:3] = 2
        angles = np.stack([position_ids[band].astype(np.float64) * inv_freq[f]
                           for f, band in enumerate(band_of_freq)], axis=-1)
    # GPT-J pairs (GLM-4.1V): each angle twice in place; else the rotate-half layout, the angles twice in a row
    angles = np.repeat(angles, 2, axis=-1) if rotary_interleaved else np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rotary(x, cos, sin, rotary_interleaved=False):
    """The first R = cos.shape[-1] dims rotate (rotate-half or GPT-J pairs), the rest pass through (HF GLM)."""
    rotary = cos.shape[-1]
    part, rest = x[..., :rotary], x[..., rotary:]
    if rotary_interleaved:
        rotated = np.stack([-part[..., 1::2], part[..., 0::2]], axis=-1).reshape(part.shape)
    else:
        rotated = np.concatenate([-part[..., rotary // 2:], part[..., :rotary // 2]], axis=-1)
    return np.concatenate([part * cos[..., None, :] + rotated * sin[..., None, :], rest], axis=-1)


def _attention_probs(q, k, causal, window, key_padding_mask, scale):
    """Softmax probabilities (B, Hq, Sq, Sk) with KV heads repeated for GQA; zero rows where nothing is visible."""
    query_len, query_heads, head_dim = q.shape[1:]
    key_len, kv_heads = k.shape[1], k.shape[2]
    k = np.repeat(k, query_heads // kv_heads, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    last_visible = np.arange(query_len)[:, None] + key_len - query_len      # bottom-right aligned
    key_pos = np.arange(key_len)[None, :]
    visible = np.ones((q.shape[0], 1, query_len, key_len), dtype=bool)
    if causal:
        visible &= key_pos <= last_visible
        if window is not None:
            visible &= last_visible - key_pos < window
    if key_padding_mask is not None:
        visible &= key_padding_mask.astype(bool)[:, None, None, :]
    seen = visible.any(-1, keepdims=True)
    scores = np.where(visible & seen, scores, -np.inf)
    scores = np.where(seen, scores, 0.0)                                      # rows that see nothing ...
    return np.where(seen, softmax(scores), 0.0)                               # ... give zeros


def attention_dense(q, k, v, causal=False, window=None, key_padding_mask=None, scale=None):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) → (B, Sq, Hq, D); query head h uses KV head h // (Hq / Hkv)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = _attention_probs(q, k, causal, window, key_padding_mask, scale)
    v = np.repeat(v, q.shape[2] // v.shape[2], axis=2)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def attention_dense_grads(q, k, v, out_grad, causal=False, window=None, key_padding_mask=None, scale=None):
    """Analytic (dq, dk, dv) of ``sum(attention_dense(q, k, v) * out_grad)`` (checked against finite differences
    in test_attention.py): dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dP P)), dQ = s dS K, dK = s dS^T Q."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[2] // k.shape[2]
    probs = _attention_probs(q, k, causal, window, key_padding_mask, scale)
    k_rep, v_rep = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    d_v = np.einsum("bhqk,bqhd->bkhd", probs, out_grad)
    d_probs = np.einsum("bqhd,bkhd->bhqk", out_grad, v_rep)
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    d_q = np.einsum("bhqk,bkhd->bqhd", d_scores, k_rep) * scale
    d_k = np.einsum("bhqk,bqhd->bkhd", d_scores, q) * scale

    def fold(grad):                                                            # sum the query heads of a KV head
        return grad.reshape(grad.shape[:2] + (k.shape[2], groups, grad.shape[-1])).sum(3)
    return [d_q, fold(d_k), fold(d_v)]


def attention_varlen(q, k, v, cu_seqlens, causal=False, window=None, scale=None):
    """q/k/v (T, H, D) packed; each sequence of cu_seqlens attends only to itself."""
    out = np.zeros(q.shape)
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        out[start:end] = attention_dense(q[None, start:end], k[None, start:end], v[None, start:end],
                                         causal, window, None, scale)[0]
    return out


def attention_varlen_grads(q, k, v, out_grad, cu_seqlens, causal=False, window=None, scale=None):
    """Analytic (dq, dk, dv) for :func:`attention_varlen`, sequence by sequence."""
    grads = [np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)]
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        pieces = attention_dense_grads(q[None, start:end], k[None, start:end], v[None, start:end],
                                       out_grad[None, start:end], causal, window, None, scale)
        for grad, piece in zip(grads, pieces):
            grad[start:end] = piece[0]
    return grads


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean"):
    kept = labels != ignore_index
    losses = np.zeros(len(labels))
    log_probs = log_softmax(logits)
    losses[kept] = -log_probs[np.nonzero(kept)[0], labels[kept]]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / max(int(kept.sum()), 1)


def router_topk(logits, k, normalize=True):
    probs = softmax(logits)
    indices = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, indices, axis=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights, indices


def topk_indices(x, k):
    """The k largest along the last dim, the lower index first among equal values (a stable argsort of -x)."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def moe_permute(x, indices, num_experts):
    order = np.argsort(indices.reshape(-1), kind="stable")
    return x[order // indices.shape[1]], order, np.bincount(indices.reshape(-1), minlength=num_experts)


def grouped_matmul(x, weight, tokens_per_expert):
    ends = np.cumsum(tokens_per_expert)
    starts = ends - tokens_per_expert
    return np.concatenate([x[s:e] @ weight[expert] for expert, (s, e) in enumerate(zip(starts, ends))], axis=0)


def moe_unpermute(permuted, order, weights):
    tokens, top_k = weights.shape
    out = np.zeros((tokens, permuted.shape[1]))
    for row, flat in enumerate(order):
        out[flat // top_k] += weights[flat // top_k, flat % top_k] * permuted[row]
    return out


def moe_experts(x, weights, indices, gate_up, down):
    """sum_k weights[t, k] * down_e(silu(gate_e x_t) * up_e x_t), e = indices[t, k]: every expert on every token,
    then each token picks its K experts' outputs."""
    ffn = down.shape[1]
    projected = np.einsum("tc,ecf->tef", x, gate_up)                           # (T, E, 2F)
    hidden = silu(projected[..., :ffn]) * projected[..., ffn:]
    expert_out = np.einsum("tef,efc->tec", hidden, down)                      # (T, E, C)
    chosen = np.take_along_axis(expert_out, indices[..., None], axis=1)        # (T, K, C)
    return (weights[..., None] * chosen).sum(1)


def numeric_grads(scalar_fn, arrays, step=1e-6):
    """Central-difference gradients of ``scalar_fn(*arrays)`` (float64) w.r.t. every array."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]                  # private copies, nudged in place
    grads = []
    for array in arrays:
        flat, grad = array.reshape(-1), np.zeros(array.size)
        for position in range(array.size):
            kept = flat[position]
            flat[position] = kept + step
            up = scalar_fn(*arrays)
            flat[position] = kept - step
            grad[position] = (up - scalar_fn(*arrays)) / (2 * step)
            flat[position] = kept
        grads.append(grad.reshape(array.shape))
    return grads
