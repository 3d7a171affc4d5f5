"""The :mod:`mmx.ops` contract on PyTorch: the same functions, parameter names, defaults and order.

Each function follows its contract docstring in ``mmx/ops/__init__.py`` (the spec; only torch-specific notes are
repeated here). New tensors are created on the backend device (``mmx.backends.torch.device()``). Half-precision
inputs to softmax, log-softmax, norms, rotary and cross entropy are upcast to float32 inside the op, as the
contract says; float64 inputs stay float64 (the numpy references in tests use them).
"""
import builtins

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F

import mmx.backends.torch as torch_backend
from mmx.rope import mrope_frequency_rows
from mmx.backends.torch import kernels

float32 = torch.float32
float16 = torch.float16
bfloat16 = torch.bfloat16
int32 = torch.int32
int64 = torch.int64
bool_ = torch.bool

_HALF = (torch.float16, torch.bfloat16)


def _upcast(x):
    """``x`` in float32 when it is half precision, else unchanged (float64 keeps its precision)."""
    return x.float() if x.dtype in _HALF else x


def _all_dims(x, dim):
    return tuple(range(x.ndim)) if dim is None else dim


# ----------------------------------------------------------------------------------------------------------------
# Tensors: creation, interop, dtype
# ----------------------------------------------------------------------------------------------------------------

def tensor(data, dtype=None):
    if isinstance(data, torch.Tensor):
        out = data.detach().clone()
    elif isinstance(data, (np.ndarray, np.generic)):
        # A private C-ordered copy: torch refuses negative strides, and the tensor must not share numpy's memory.
        array = np.array(data, copy=True, order="C")
        if array.dtype == ml_dtypes.bfloat16:
            # numpy has no native bf16: move the bits as int16 and reinterpret them on the torch side.
            out = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            out = torch.from_numpy(array)
    else:
        out = torch.tensor(data)
    out = out.to(torch_backend.device())
    return out if dtype is None else out.to(dtype)


def to_numpy(x):
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
    return x.numpy().copy()


def zeros(shape, dtype=None):
    return torch.zeros(tuple(shape), dtype=dtype or torch.float32, device=torch_backend.device())


def ones(shape, dtype=None):
    return torch.ones(tuple(shape), dtype=dtype or torch.float32, device=torch_backend.device())


def full(shape, value, dtype=None):
    return torch.full(tuple(shape), value, dtype=dtype or torch.float32, device=torch_backend.device())


def zeros_like(x):
    return torch.zeros_like(x)


def arange(start, end=None, step=1, dtype=None):
    if end is None:
        start, end = 0, start
    return torch.arange(start, end, step, dtype=dtype or torch.int64, device=torch_backend.device())


def randn(shape, dtype=None, seed=None):
    # Drawn on the CPU with its own generator, then moved: the same seed gives the same numbers on every device.
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return out.to(device=torch_backend.device(), dtype=dtype or torch.float32)


def cast(x, dtype):
    return x.to(dtype)


def stop_gradient(x):
    return x.detach()


# ----------------------------------------------------------------------------------------------------------------
# Shape and indexing
# ----------------------------------------------------------------------------------------------------------------

def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def transpose(x, dim0, dim1):
    return torch.transpose(x, dim0, dim1)


def permute(x, dims):
    return x.permute(*dims)


def unsqueeze(x, dim):
    return torch.unsqueeze(x, dim)


def squeeze(x, dim):
    if x.shape[dim] != 1:
        raise ValueError(f"squeeze: dimension {dim} of a tensor of shape {tuple(x.shape)} has size "
                         f"{x.shape[dim]}, not 1")
    return torch.squeeze(x, dim)


def expand(x, shape):
    return x.expand(*shape)


def repeat_interleave(x, repeats, dim):
    return torch.repeat_interleave(x, repeats, dim)


def cat(xs, dim=0):
    return torch.cat(list(xs), dim)


def stack(xs, dim=0):
    return torch.stack(list(xs), dim)


def split(x, sizes, dim=0):
    sizes = [int(size) for size in sizes]
    if builtins.sum(sizes) != x.shape[dim]:
        raise ValueError(f"split: sizes {sizes} sum to {builtins.sum(sizes)} but dimension {dim} of the tensor "
                         f"has size {x.shape[dim]}")
    return list(torch.split(x, sizes, dim))


def gather(x, dim, index):
    return torch.gather(x, dim, index)


def index_select(x, dim, index):
    return torch.index_select(x, dim, index)


def scatter(x, dim, index, src):
    return torch.scatter(x, dim, index, src)


def masked_scatter(x, mask, src):
    selected = int(mask.expand_as(x).sum())
    if src.numel() < selected:
        raise ValueError(f"masked_scatter: the mask selects {selected} elements but src has only {src.numel()} "
                         f"(shape {tuple(src.shape)}); e.g. image tokens in the text and image features disagree")
    return x.masked_scatter(mask, src)


def where(condition, x, y):
    return torch.where(condition, x, y)


def tril(x, diagonal=0):
    return torch.tril(x, diagonal)


def topk(x, k, dim=-1):
    values, indices = torch.topk(x, k, dim=dim, largest=True, sorted=True)
    return values, indices


def topk_indices(x, k):
    # A stable descending sort keeps equal values in index order; torch.topk's tie order depends on the kernel
    # (CPU: [0.5, 0.7, 0.7, 0.1, 0.7] top-2 → [1, 4]).
    return torch.sort(x.detach(), dim=-1, descending=True, stable=True)[1][..., :k]


def cumsum(x, dim):
    # torch promotes integer cumsums to int64; the contract keeps the input's dtype (cu_seqlens stay int32).
    return torch.cumsum(x, dim, dtype=x.dtype if x.dtype != torch.bool else torch.int64)


def argmax(x, dim):
    return torch.argmax(x, dim)


# ----------------------------------------------------------------------------------------------------------------
# Elementwise and reductions
# ----------------------------------------------------------------------------------------------------------------

def exp(x):
    return torch.exp(x)


def log(x):
    return torch.log(x)


def sqrt(x):
    return torch.sqrt(x)


def rsqrt(x):
    return torch.rsqrt(x)


def cos(x):
    return torch.cos(x)


def sin(x):
    return torch.sin(x)


def sigmoid(x):
    return torch.sigmoid(x)


def silu(x):
    return F.silu(x)


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x, approximate=approximate)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def dropout(x, p):
    return torch.nn.functional.dropout(x, p, training=True) if p else x


def sum(x, dim=None, keepdim=False):  # noqa: A001 - the contract's name
    return torch.sum(x, dim=_all_dims(x, dim), keepdim=keepdim)


def mean(x, dim=None, keepdim=False):
    return torch.mean(x, dim=_all_dims(x, dim), keepdim=keepdim)


def amax(x, dim=None, keepdim=False):
    return torch.amax(x, dim=_all_dims(x, dim), keepdim=keepdim)


def softmax(x, dim=-1):
    return torch.softmax(_upcast(x), dim).to(x.dtype)


def log_softmax(x, dim=-1):
    return torch.log_softmax(_upcast(x), dim).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------

def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def matmul(a, b):
    return torch.matmul(a, b)


def embedding(ids, weight):
    return F.embedding(ids, weight)


def rms_norm(x, weight, eps):
    hidden = _upcast(x)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    normed = (hidden * torch.rsqrt(variance + eps)).to(x.dtype)
    return (weight * normed).to(x.dtype)


def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rotary_cos_sin(position_ids, inv_freq, mrope_section=None, mrope_interleaved=False, rotary_interleaved=False):
    inv_freq = inv_freq.float()
    freqs = position_ids.float().unsqueeze(-1) * inv_freq                     # (..., S, D/2)
    if mrope_section is not None:
        if position_ids.ndim != 3 or position_ids.shape[0] != 3:
            raise ValueError(f"rotary_cos_sin: with mrope_section, position_ids must be (3, B, S) "
                             f"(temporal, height, width rows); got shape {tuple(position_ids.shape)}")
        if builtins.sum(mrope_section) != inv_freq.shape[0]:
            raise ValueError(f"rotary_cos_sin: mrope_section {list(mrope_section)} sums to "
                             f"{builtins.sum(mrope_section)} but inv_freq has {inv_freq.shape[0]} frequencies")
        # Frequency f takes its angle from position row rows[f] (temporal, height or width).
        rows = torch.from_numpy(mrope_frequency_rows(mrope_section, mrope_interleaved)).to(freqs.device)
        freqs = freqs.gather(0, rows.view(1, 1, 1, -1).expand(1, *freqs.shape[1:]))[0]   # (B, S, D/2)
    angles = freqs.repeat_interleave(2, dim=-1) if rotary_interleaved else torch.cat([freqs, freqs], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rotate_pairs(x):
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def apply_rotary(x, cos, sin, rotary_interleaved=False):
    # cos/sin (B, S, R) or (T, R) broadcast over the head dimension of x (B, S, H, D) or (T, H, D); R < D rotates
    # the first R dims only (partial rotary).
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    hidden = x.float() if x.dtype != torch.float64 else x
    rotary = cos.shape[-1]
    if rotary > hidden.shape[-1] or rotary % 2:
        raise ValueError(f"apply_rotary: cos/sin have {rotary} dims but x has head dim {hidden.shape[-1]}; the "
                         f"rotary dims must be even and at most the head dim")
    part = hidden[..., :rotary] if rotary < hidden.shape[-1] else hidden
    turned = _rotate_pairs(part) if rotary_interleaved else _rotate_half(part)
    out = part * cos + turned * sin
    if rotary < hidden.shape[-1]:
        out = torch.cat([out, hidden[..., rotary:]], dim=-1)
    return out.to(x.dtype)


def attention(q, k, v, *, causal=False, cu_seqlens=None, window=None, key_padding_mask=None, scale=None,
              impl="auto"):
    call = kernels.AttentionCall.check(q, k, v, causal, cu_seqlens, window, key_padding_mask, scale)
    return kernels.attention_kernel(impl, call)(call)


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean"):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    losses = F.cross_entropy(_upcast(logits), labels, ignore_index=ignore_index, reduction="none")
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    # torch's own mean is NaN when every label is ignored; the contract says 0 (an all-prompt micro-batch).
    counted = (labels != ignore_index).sum().clamp(min=1)
    return total / counted.to(total.dtype)


LOGITS_CHUNK_ELEMENTS = 1 << 26   # linear_cross_entropy's default chunk: 256 MiB of float32 logits


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked output layer + weighted cross entropy (mmx.ops.linear_cross_entropy). The gradients are computed in
    the forward, chunk by chunk (three GEMMs per chunk: logits, d hidden, d weight, as Liger-Kernel's fused linear
    cross entropy does), so the backward only scales them by the incoming gradient: no logits are kept or
    recomputed. The chunk GEMMs run in the dtype ``F.linear`` picks (the autocast dtype under autocast)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, weights, chunk_size):
        chunk_size = chunk_size or builtins.max(1, LOGITS_CHUNK_ELEMENTS // weight.shape[0])
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        labels = labels.long()
        valid = labels != -100
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        row_weights = torch.where(valid, weights.float(), torch.zeros((), dtype=torch.float32, device=hidden.device))
        for start in range(0, hidden.shape[0], chunk_size):
            chunk, target = hidden[start:start + chunk_size], safe[start:start + chunk_size, None]
            raw = F.linear(chunk, weight)
            logits = raw.float()                                # (n, V) float32: the only big buffer
            scale = row_weights[start:start + chunk_size]
            picked = logits.gather(1, target)
            top = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(top).exp_()                      # in place: no second (n, V) buffer
            sums = exps.sum(dim=-1, keepdim=True)
            total = total + torch.sum((sums.log() + top - picked)[:, 0] * scale)
            if need_hidden or need_weight:
                # d loss / d logits = (softmax - one_hot) * weight, built in the same buffer
                probs = exps.div_(sums)
                probs.scatter_add_(1, target, torch.full(target.shape, -1.0, device=probs.device))
                grad_logits = probs.mul_(scale[:, None]).to(raw.dtype)
                if need_hidden:
                    grad_hidden[start:start + chunk_size] = grad_logits @ weight.to(raw.dtype)
                if need_weight:
                    grad_weight += grad_logits.t() @ chunk.to(raw.dtype)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.needs, ctx.weight_dtype = (need_hidden, need_weight), weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = list(ctx.saved_tensors)
        grad_hidden = grad_weight = None
        if ctx.needs[0]:
            grad = saved.pop(0)
            grad_hidden = grad * grad_total.to(grad.dtype)
        if ctx.needs[1]:   # in place: no second (V, C) buffer
            grad_weight = saved.pop(0).mul_(grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden, weight, labels, weights, chunk_size=None):
    return _LinearCrossEntropy.apply(hidden, weight, labels, weights, int(chunk_size or 0))


# ----------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------------

def router_linear(x, weight):
    with torch.autocast(device_type=x.device.type, enabled=False):   # bf16 autocast would run it in bf16
        return F.linear(x.float(), weight.float())


def router_topk(logits, k, normalize=True):
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def moe_permute(x, indices, num_experts):
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    top_k = indices.shape[-1]
    permuted = x.index_select(0, torch.div(order, top_k, rounding_mode="floor"))
    tokens_per_expert = torch.bincount(flat, minlength=num_experts)
    return permuted, order, tokens_per_expert


def grouped_matmul(x, weight, tokens_per_expert):
    return kernels.grouped_mm(x, weight, tokens_per_expert)


def moe_unpermute(permuted, order, weights):
    tokens, top_k = weights.shape
    # Row order[i] of the flat (token, slot) layout holds permuted row i; the weighted sum runs in float32.
    unsorted = torch.empty_like(permuted).index_copy(0, order, permuted)
    combined = (unsorted.reshape(tokens, top_k, -1).float() * weights.float().unsqueeze(-1)).sum(dim=1)
    return combined.to(permuted.dtype)


def moe_experts(x, weights, indices, gate_up, down, impl="auto"):
    return kernels.moe_kernel(impl, x)(x, weights, indices, gate_up, down)
