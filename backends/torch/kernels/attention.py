"""Attention kernels: each takes an :class:`AttentionCall` and returns the output in q's layout and dtype.

Semantics (the contract, ``mmx.ops.attention``): causal is bottom-right aligned (query i sees key j when
``j <= i + Sk - Sq``), ``window`` keeps ``i + Sk - Sq - j < window``, padded keys are never seen, and a query row
that sees no key returns zeros. Varlen sequences attend only within themselves (Sq == Sk per sequence).
"""
import importlib
import importlib.util

import numpy as np
import torch
import torch.nn.functional as F

import mmx.backends.torch as torch_backend
from mmx.backends.torch.kernels import ATTENTION, register

_HALF = (torch.float16, torch.bfloat16)


def visible_mask(query_len, key_len, causal, window, key_padding_mask, device):
    """Bool (B or 1, 1, Sq, Sk), true where a query may see a key; None when every key is visible."""
    mask = None
    if causal:
        query_pos = torch.arange(query_len, device=device)[:, None] + (key_len - query_len)
        key_pos = torch.arange(key_len, device=device)[None, :]
        mask = key_pos <= query_pos
        if window is not None:
            mask = mask & (query_pos - key_pos < window)
        mask = mask[None, None]
    if key_padding_mask is not None:
        padding = key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        mask = padding if mask is None else mask & padding
    return mask


def _per_sequence(call, dense_fn):
    """Run ``dense_fn(q, k, v, causal, window, mask=None, scale)`` on each varlen sequence as a batch of one."""
    pieces = zip(*(torch.split(t, call.seqlens, dim=0) for t in (call.q, call.k, call.v)))
    outs = [dense_fn(q[None], k[None], v[None], call.causal, call.window, None, call.scale)[0] for q, k, v in pieces]
    return torch.cat(outs, dim=0)


def _run(call, dense_fn):
    if call.varlen:
        return _per_sequence(call, dense_fn)
    return dense_fn(call.q, call.k, call.v, call.causal, call.window, call.key_padding_mask, call.scale)


# ----------------------------------------------------------------------------------------------------------------
# eager: the math reference (float32 matmul + mask + softmax), every option on every device
# ----------------------------------------------------------------------------------------------------------------

def _eager_dense(q, k, v, causal, window, key_padding_mask, scale):
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    groups = q.shape[2] // k.shape[2]
    query = q.to(compute).transpose(1, 2)                                        # (B, Hq, Sq, D)
    key = k.to(compute).repeat_interleave(groups, dim=2).transpose(1, 2)         # (B, Hq, Sk, D)
    value = v.to(compute).repeat_interleave(groups, dim=2).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale                  # (B, Hq, Sq, Sk)
    mask = visible_mask(q.shape[1], k.shape[1], causal, window, key_padding_mask, q.device)
    if mask is not None:
        # A finite fill keeps rows with no visible key finite (uniform); they are zeroed after the softmax.
        scores = scores.masked_fill(~mask, torch.finfo(compute).min)
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs * mask.any(dim=-1, keepdim=True)
    return torch.matmul(probs, value).transpose(1, 2).to(q.dtype)


@register(ATTENTION, "eager", available=lambda: True)
def eager(call):
    return _run(call, _eager_dense)


# ----------------------------------------------------------------------------------------------------------------
# sdpa: torch.nn.functional.scaled_dot_product_attention (CPU and CUDA default)
# ----------------------------------------------------------------------------------------------------------------

def _sdpa_dense(q, k, v, causal, window, key_padding_mask, scale):
    query, key, value = (t.transpose(1, 2) for t in (q, k, v))                  # (B, H, S, D)
    gqa = q.shape[2] != k.shape[2]
    if causal and window is None and key_padding_mask is None and q.shape[1] == k.shape[1]:
        # Square causal: SDPA's top-left is_causal equals the contract's bottom-right one and needs no mask.
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    mask = visible_mask(q.shape[1], k.shape[1], causal, window, key_padding_mask, q.device)
    if mask is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=gqa).transpose(1, 2)
    seen = mask.any(dim=-1, keepdim=True)
    # Rows that see nothing attend everywhere (keeping every SDPA backend finite), then are set to zero.
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask | ~seen, scale=scale, enable_gqa=gqa)
    return torch.where(seen, out, torch.zeros((), dtype=out.dtype, device=out.device)).transpose(1, 2)


@register(ATTENTION, "sdpa", available=lambda: True)
def sdpa(call):
    return _run(call, _sdpa_dense)


# ----------------------------------------------------------------------------------------------------------------
# flash_attn: the flash-attention package on CUDA (bf16/fp16), varlen via flash_attn_varlen_func
# ----------------------------------------------------------------------------------------------------------------

def _device_kind():
    return torch_backend.device().split(":")[0]


def _importable(module_name):
    return importlib.util.find_spec(module_name) is not None


def _flash_available():
    return _device_kind() == "cuda" and _importable("flash_attn")


def _flash_supports(call):
    if call.q.device.type != "cuda":
        return f"flash_attn runs on CUDA tensors, these are on {call.q.device}"
    if call.q.dtype not in _HALF:
        return f"flash_attn computes in bfloat16/float16, not {call.q.dtype}"
    if call.key_padding_mask is not None:
        return "flash_attn takes no key_padding_mask here (pack the batch as varlen instead)"
    if call.q.shape[-1] > 256:
        return f"flash_attn supports head dim <= 256, got {call.q.shape[-1]}"
    return None


@register(ATTENTION, "flash_attn", available=_flash_available, supports=_flash_supports)
def flash_attn(call):
    flash = importlib.import_module("flash_attn")
    # flash-attn's causal mask is bottom-right aligned (>= 2.1), like the contract; window counts keys to the left.
    window = (call.window - 1, 0) if call.window is not None else (-1, -1)
    if call.varlen:
        cu_seqlens = call.cu_seqlens
        if not isinstance(cu_seqlens, torch.Tensor):  # host bounds: an asynchronous upload, no device -> host read
            cu_seqlens = torch.from_numpy(np.asarray(cu_seqlens, np.int32)).to(call.q.device, non_blocking=True)
        cu_seqlens = cu_seqlens.to(device=call.q.device, dtype=torch.int32)
        longest = max(call.seqlens)
        return flash.flash_attn_varlen_func(call.q, call.k, call.v, cu_seqlens, cu_seqlens, longest, longest,
                                            softmax_scale=call.scale, causal=call.causal, window_size=window)
    return flash.flash_attn_func(call.q, call.k, call.v, softmax_scale=call.scale, causal=call.causal,
                                 window_size=window)


# ----------------------------------------------------------------------------------------------------------------
# npu_fusion: torch_npu.npu_fusion_attention on Ascend (bf16/fp16); its atten_mask is true where NOT visible
# ----------------------------------------------------------------------------------------------------------------

_NPU_CAUSAL_MASK_SIZE = 2048  # sparse_mode 3 takes a compressed (2048, 2048) upper-triangular mask


def _npu_available():
    return torch_backend.on_ascend() and _importable("torch_npu")


def _npu_supports(call):
    if call.q.device.type != "npu":
        return f"npu_fusion runs on npu tensors, these are on {call.q.device}"
    if call.q.dtype not in _HALF:
        return f"npu_fusion computes in bfloat16/float16, not {call.q.dtype}"
    if call.varlen and call.window is not None:
        return "npu_fusion here has no varlen sliding window"
    return None


@register(ATTENTION, "npu_fusion", available=_npu_available, supports=_npu_supports)
def npu_fusion(call):
    torch_npu = importlib.import_module("torch_npu")
    heads = call.q.shape[-2]
    if call.varlen:
        lengths = [int(b) for b in np.cumsum(call.seqlens)]  # cu_seqlens[1:], from the host bounds
        mask, mode = None, 0
        if call.causal:
            size = _NPU_CAUSAL_MASK_SIZE
            mask = torch.ones(size, size, dtype=torch.bool, device=call.q.device).triu(diagonal=1)
            mode = 3                                           # right-down causal, per sequence
        return torch_npu.npu_fusion_attention(
            call.q, call.k, call.v, heads, "TND", atten_mask=mask, scale=call.scale, sparse_mode=mode,
            actual_seq_qlen=lengths, actual_seq_kvlen=lengths)[0]
    mask = visible_mask(call.q.shape[1], call.k.shape[1], call.causal, call.window, call.key_padding_mask,
                        call.q.device)
    if mask is None:
        return torch_npu.npu_fusion_attention(call.q, call.k, call.v, heads, "BSND", scale=call.scale)[0]
    seen = mask.any(dim=-1, keepdim=True)                                        # (B|1, 1, Sq, 1)
    out = torch_npu.npu_fusion_attention(call.q, call.k, call.v, heads, "BSND", atten_mask=~(mask | ~seen),
                                         scale=call.scale, sparse_mode=0)[0]
    seen = seen[:, 0, :, :, None]                                                # (B|1, Sq, 1, 1) for BSND
    return torch.where(seen, out, torch.zeros((), dtype=out.dtype, device=out.device))
