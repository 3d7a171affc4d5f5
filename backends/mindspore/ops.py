"""The :mod:`mmx.ops` contract on MindSpore 2.10 (same names, signatures and order as ``mmx/ops/__init__.py``).

Everything runs in MindSpore (PyNative); only integer metadata that HF also computes on the host (group sizes of a
grouped matmul) is read back. Landmines of MindSpore 2.10 on CPU this file steps around (ARCHITECTURE.md):

- Many ``mint`` kernels are Ascend-only ("kernel ... unregistered" on CPU): the portable ``mindspore.ops`` functions
  are used everywhere; Ascend gets fused kernels only where they exist (``rms_norm``, ``grouped_matmul``,
  ``flash_attention_score`` in ``kernels``), chosen here by device, never in model code.
- **bfloat16 compute is unsupported on CPU** (MatMul, Select, Gather, Softmax, SiLU, ReduceSum and the gradients of
  slicing, broadcast and stack reject it). Every contract op given bf16 on CPU computes in float32 and rounds the
  result to bf16 (what torch does inside its bf16 CPU kernels), forward and backward. Outside the contract ops, bf16
  on CPU is storage only: Python's ``@`` fails, and Python slicing of a bf16 tensor works forward but has no
  gradient kernel. So bf16 *inference* runs on CPU; bf16 *training* needs Ascend (the trainer refuses it on CPU).
- ``mint.split`` outputs feeding ``cat`` get wrong gradients: :func:`split` slices.
- In-place tensor methods do nothing in PyNative: nothing here mutates; parameters change only through
  ``mindspore.ops.assign`` (``nn.load_state_dict``, the optimizer).
"""
import builtins

import ml_dtypes
import mindspore
import numpy as np
from mindspore import Tensor
from mindspore import ops as P

import mmx.backends.mindspore as _backend
from mmx.backends.mindspore import kernels
from mmx.rope import mrope_frequency_rows

float32 = mindspore.float32
float16 = mindspore.float16
bfloat16 = mindspore.bfloat16
int32 = mindspore.int32
int64 = mindspore.int64
bool_ = mindspore.bool_

_FLOATS = (float32, float16, bfloat16)
_matmul_nt = P.MatMul(transpose_b=True)  # x @ w.T without materialising w.T (2x faster on CPU than matmul(x, w.T))


def _compute(x):
    """``x`` in a dtype this device computes in: bf16 → float32 on CPU, unchanged otherwise."""
    if x.dtype == bfloat16 and not _backend.on_ascend():
        return P.cast(x, float32)
    return x


def _back(y, dtype):
    return y if y.dtype == dtype else P.cast(y, dtype)


def _unary(fn, x):
    return _back(fn(_compute(x)), x.dtype)


def _fp32(x):
    return x if x.dtype == float32 else P.cast(x, float32)


def _full(x, shape):
    """``x`` tiled to ``shape`` (its dims right-aligned, each 1 or equal) on CPU, unchanged on Ascend. MindSpore
    2.10's CPU kernels for broadcasting elementwise ops are slow forward and backward, a tile is not: fwd+bwd of
    (2, 510, 6, 64) × (2, 510, 1, 64) 15.3 ms vs 7.4 ms tiled first, (1020, 384) × (1020, 1) 14.9 vs 9.8,
    (2, 6, 510, 510) + (1, 1, 510, 510) 70 vs 40 (docs/performance.md). A tile copies, so the results are the same
    bits."""
    shape = tuple(shape)
    if tuple(x.shape) == shape or _backend.on_ascend():
        return x
    if x.ndim < len(shape):
        x = P.reshape(x, (1,) * (len(shape) - x.ndim) + tuple(x.shape))
    return P.tile(x, tuple(size // own for size, own in zip(shape, x.shape)))


def _detached_copy(x):
    """A new tensor with ``x``'s values and no autograd history (the Identity kernel has no bf16 on CPU)."""
    if x.dtype == bfloat16 and not _backend.on_ascend():
        return Tensor(to_numpy(x))
    return P.deepcopy(P.stop_gradient(x))


def _dims(dim):
    return tuple(dim) if isinstance(dim, (list, tuple)) else dim


# ----------------------------------------------------------------------------------------------------------------
# Tensors: creation, interop, dtype
# ----------------------------------------------------------------------------------------------------------------

def tensor(data, dtype=None):
    if isinstance(data, Tensor):
        out = _detached_copy(data)  # as torch's detach().clone()
    else:
        array = np.asarray(data)
        if not isinstance(data, np.ndarray) and array.dtype == np.float64:
            array = array.astype(np.float32)  # Python floats become float32, as in torch.tensor
        out = Tensor(array)  # ml_dtypes.bfloat16 arrays arrive as bfloat16 tensors
    return out if dtype is None else cast(out, dtype)


def to_numpy(x):
    array = x.asnumpy()  # a bf16 tensor gives an ml_dtypes.bfloat16 array
    if x.dtype == bfloat16 and array.dtype != ml_dtypes.bfloat16:
        array = array.view(ml_dtypes.bfloat16)
    return array.copy()


# nn.empty_init(): creation functions return lazy initializer tensors (no storage until set_data)
_EMPTY_INIT = [False]


def _lazy(kind, shape, dtype):
    from mindspore.common.initializer import initializer

    return initializer(kind, tuple(shape), dtype or float32)


def zeros(shape, dtype=None):
    if _EMPTY_INIT[0]:
        return _lazy("zeros", shape, dtype)
    return P.zeros(tuple(shape), dtype or float32)


def ones(shape, dtype=None):
    if _EMPTY_INIT[0]:
        return _lazy("ones", shape, dtype)
    return P.ones(tuple(shape), dtype or float32)


def full(shape, value, dtype=None):
    if _EMPTY_INIT[0]:
        from mindspore.common.initializer import Constant

        return _lazy(Constant(value), shape, dtype)
    dtype = dtype or float32
    # P.full has no bf16 CPU kernel: fill in float32, then cast (exact for any bf16-representable value).
    fill_dtype = float32 if dtype == bfloat16 else dtype
    return _back(P.full(tuple(shape), value, dtype=fill_dtype), dtype)


def zeros_like(x):
    return P.zeros(x.shape, x.dtype)


def arange(start, end=None, step=1, dtype=None):
    if end is None:
        start, end = 0, start
    dtype = dtype or int64
    if dtype in _FLOATS:
        return _back(P.arange(start, end, step, dtype=float32), dtype)
    return P.arange(start, end, step, dtype=dtype)


def randn(shape, dtype=None, seed=None):
    dtype = dtype or float32
    if seed is None:
        return _back(P.randn(tuple(shape), dtype=float32), dtype)
    # MindSpore's seeded ops advance a per-op counter (two calls with seed=3 differ); a seeded draw must repeat,
    # so it comes from a fresh generator. Initialisation only, never inside forward/backward.
    sample = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
    return _back(Tensor(sample), dtype)


def cast(x, dtype):
    return _back(x, dtype)


def stop_gradient(x):
    return P.stop_gradient(x)


# ----------------------------------------------------------------------------------------------------------------
# Shape and indexing
# ----------------------------------------------------------------------------------------------------------------

def reshape(x, shape):
    return P.reshape(x, tuple(shape))


def transpose(x, dim0, dim1):
    return P.swapaxes(x, dim0, dim1)


def permute(x, dims):
    return P.permute(x, tuple(dims))


def unsqueeze(x, dim):
    return P.expand_dims(x, dim)


def squeeze(x, dim):
    if x.shape[dim] != 1:
        raise ValueError(f"squeeze: dimension {dim} of a tensor of shape {tuple(x.shape)} has size "
                         f"{x.shape[dim]}, not 1")
    return P.squeeze(x, dim)


def expand(x, shape):
    return _unary(lambda v: P.broadcast_to(v, tuple(shape)), x)


def repeat_interleave(x, repeats, dim):
    # A broadcast + reshape: no kernel (mint's is Ascend-only), any dtype, exact gradient (a sum over the copies).
    dim = dim % x.ndim
    shape = x.shape
    expanded = P.broadcast_to(P.expand_dims(_compute(x), dim + 1), shape[:dim + 1] + (repeats,) + shape[dim + 1:])
    return _back(P.reshape(expanded, shape[:dim] + (shape[dim] * repeats,) + shape[dim + 1:]), x.dtype)


def cat(xs, dim=0):
    xs = tuple(xs)
    return _back(P.cat(tuple(_compute(x) for x in xs), dim), xs[0].dtype)


def stack(xs, dim=0):
    xs = tuple(xs)
    return _back(P.stack(tuple(_compute(x) for x in xs), dim), xs[0].dtype)


def split(x, sizes, dim=0):
    # Basic slicing, not mint.split, whose outputs give wrong gradients once they meet cat (ARCHITECTURE.md).
    dim = dim % x.ndim
    if builtins.sum(sizes) != x.shape[dim]:
        raise ValueError(f"split sizes {list(sizes)} sum to {builtins.sum(sizes)} but dimension {dim} of x has "
                         f"{x.shape[dim]} entries")
    pieces, start = [], 0
    lead = (slice(None),) * dim
    source = _compute(x)
    for size in sizes:
        pieces.append(_back(source[lead + (slice(start, start + size),)], x.dtype))
        start += size
    return pieces


def gather(x, dim, index):
    return _back(P.gather_elements(_compute(x), dim, index), x.dtype)


def index_select(x, dim, index):
    return _back(P.gather(_compute(x), index, dim), x.dtype)


def scatter(x, dim, index, src):
    return _back(P.tensor_scatter_elements(_compute(x), index, _back(_compute(src), _compute(x).dtype), dim),
                 x.dtype)


def masked_scatter(x, mask, src):
    mask = P.broadcast_to(_back(mask, bool_), x.shape)
    flat_mask = P.reshape(mask, (-1,))
    flat_src = P.reshape(src, (-1,))
    needed = int(P.sum(P.cast(flat_mask, int32)))
    if needed > flat_src.shape[0]:
        raise ValueError(f"masked_scatter: the mask selects {needed} elements but src has only {flat_src.shape[0]} "
                         f"(shape {tuple(src.shape)}); e.g. image tokens in the text and image features disagree")
    # Position p takes src[number of selected positions before p]; unselected positions read src[0] and drop it.
    source_index = P.clamp(P.cumsum(P.cast(flat_mask, int32), 0) - 1, 0, None)
    taken = P.gather(_compute(flat_src), source_index, 0)
    out = P.where(flat_mask, _back(taken, _compute(x).dtype), P.reshape(_compute(x), (-1,)))
    return _back(P.reshape(out, x.shape), x.dtype)


def where(condition, x, y):
    dtype = x.dtype if isinstance(x, Tensor) else (y.dtype if isinstance(y, Tensor) else None)
    x = _compute(x) if isinstance(x, Tensor) else x
    y = _compute(y) if isinstance(y, Tensor) else y
    out = P.where(condition, x, y)
    return out if dtype is None else _back(out, dtype)


def tril(x, diagonal=0):
    rows, cols = x.shape[-2], x.shape[-1]
    keep = P.arange(rows).reshape(rows, 1) + diagonal >= P.arange(cols).reshape(1, cols)
    if x.dtype == bool_:
        return P.logical_and(x, keep)
    return where(keep, x, P.zeros((), x.dtype))


def topk(x, k, dim=-1):
    values, indices = P.topk(_compute(x), k, dim=dim, largest=True, sorted=True)
    return _back(values, x.dtype), _back(indices, int64)


def topk_indices(x, k):
    # Each entry's rank = #larger + #equal at a lower index (a permutation of 0..N-1, so ties are broken by index
    # whatever P.topk / P.sort do); the r-th index is where rank == r. O(N^2) comparisons per row.
    values = P.stop_gradient(_fp32(x))
    count = values.shape[-1]
    mine, other = P.expand_dims(values, -1), P.expand_dims(values, -2)            # [..., i, j]: x_i, x_j
    position = P.arange(0, count, 1, dtype=int32)
    lower = P.expand_dims(position, 0) < P.expand_dims(position, -1)               # j < i
    rank = P.sum(P.cast(other > mine, int32) + P.cast(P.logical_and(other == mine, lower), int32), -1)
    hit = P.cast(P.expand_dims(rank, -2) == P.reshape(P.arange(0, k, 1, dtype=int32), (k, 1)), float32)
    return _back(P.argmax(hit, -1), int64)


def cumsum(x, dim):
    if x.dtype == bool_:
        return P.cumsum(P.cast(x, int64), dim)
    return _unary(lambda v: P.cumsum(v, dim), x)  # integer inputs keep their dtype (cu_seqlens stay int32)


def argmax(x, dim):
    return _back(P.argmax(_compute(x), dim), int64)


# ----------------------------------------------------------------------------------------------------------------
# Elementwise and reductions
# ----------------------------------------------------------------------------------------------------------------

def exp(x):
    return _unary(P.exp, x)


def log(x):
    return _unary(P.log, x)


def sqrt(x):
    return _unary(P.sqrt, x)


def rsqrt(x):
    return _unary(P.rsqrt, x)


def cos(x):
    return _unary(P.cos, x)


def sin(x):
    return _unary(P.sin, x)


def sigmoid(x):
    return _unary(P.sigmoid, x)


def silu(x):
    return _unary(P.silu, x)


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate={approximate!r}: use 'none' (erf) or 'tanh'")
    return _unary(lambda v: P.gelu(v, approximate=approximate), x)


def quick_gelu(x):
    return _unary(lambda v: v * P.sigmoid(1.702 * v), x)


# Dropout masks come from this numpy generator, not MindSpore's random kernels: on CPU those (ops.dropout,
# ops.uniform) ignore the default generator's state, so ms.set_rng_state could not replay them and a resumed run
# would draw other masks. backends/mindspore/train.py seeds it and saves its state with the checkpoints' RNG state.
_DROPOUT_RNG = {"generator": np.random.default_rng(0)}


def dropout(x, p):
    if not p:
        return x
    keep = _DROPOUT_RNG["generator"].random(tuple(x.shape), dtype=np.float32) >= p
    return _back(_compute(x) * Tensor(keep.astype(np.float32) / np.float32(1 - p)), x.dtype)


def sum(x, dim=None, keepdim=False):  # noqa: A001 - mirrors the contract
    return _unary(lambda v: P.sum(v, _dims(dim), keepdim), x)


def mean(x, dim=None, keepdim=False):
    return _unary(lambda v: P.mean(v, _dims(dim), keepdim), x)


def amax(x, dim=None, keepdim=False):
    if dim is None:
        dim = tuple(range(x.ndim))
    return _unary(lambda v: P.amax(v, _dims(dim), keepdim), x)


def softmax(x, dim=-1):
    return _back(P.softmax(_fp32(x), dim), x.dtype)


def _log_softmax32(x, dim):
    # Composite rather than P.log_softmax, whose CPU kernel is ~2x less accurate (4e-6 vs 2e-6 max error in fp32).
    # The max is a constant shift: no gradient through it.
    shifted = _fp32(x) - P.stop_gradient(P.amax(_fp32(x), dim, True))
    return shifted - P.log(P.sum(P.exp(shifted), dim, True))


def log_softmax(x, dim=-1):
    return _back(_log_softmax32(x, dim), x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------

def linear(x, weight, bias=None):
    # One 2-D MatMul with transpose_b: the fastest CPU path (BatchMatMul over a broadcast weight is slower).
    compute_x, compute_w = _compute(x), _compute(weight)
    lead = x.shape[:-1]
    out = _matmul_nt(P.reshape(compute_x, (-1, x.shape[-1])), compute_w)
    if bias is not None:
        out = P.bias_add(out, _compute(bias))   # not a broadcasting add (see _full)
    return _back(P.reshape(out, lead + (weight.shape[0],)), x.dtype)


def matmul(a, b):
    return _back(P.matmul(_compute(a), _compute(b)), a.dtype)


def embedding(ids, weight):
    return _back(P.gather(_compute(weight), ids, 0), weight.dtype)


def rms_norm(x, weight, eps):
    if _backend.on_ascend():
        # The fused kernel keeps the statistics in float32 like the composite below.
        return P.rms_norm(x, weight, eps)[0]
    x32 = _fp32(x)
    normed = _compute(_back(x32 * _full(P.rsqrt(P.mean(x32 * x32, -1, True) + eps), x32.shape), x.dtype))
    return _back(normed * _full(_compute(weight), normed.shape), x.dtype)


def layer_norm(x, weight, bias, eps):
    # The LayerNorm primitive runs on CPU and Ascend (mint's layer_norm has no CPU kernel).
    x32 = _fp32(x)
    out = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)(x32, _fp32(weight), _fp32(bias))[0]
    return _back(out, x.dtype)


def rotary_cos_sin(position_ids, inv_freq, mrope_section=None, mrope_interleaved=False, rotary_interleaved=False):
    inv_freq = _fp32(inv_freq)
    angles = P.expand_dims(P.cast(position_ids, float32), -1) * inv_freq  # (..., S, D/2)
    if mrope_section is not None:
        if builtins.sum(mrope_section) != inv_freq.shape[0]:
            raise ValueError(f"mrope_section {list(mrope_section)} sums to {builtins.sum(mrope_section)} but "
                             f"inv_freq has {inv_freq.shape[0]} frequencies")
        # angles (3, B, S, D/2): frequency f takes its angle from position row rows[f] (temporal, height, width).
        # One-hot row masks select exactly (x * 1 + 0 + 0 == x), in 3 ops however the rows interleave.
        rows = mrope_frequency_rows(mrope_section, mrope_interleaved)
        masks = (rows[None, :] == np.arange(3)[:, None]).astype(np.float32)            # (3, D/2)
        angles = P.reduce_sum(angles * Tensor(masks.reshape(3, 1, 1, -1)), 0)
    if rotary_interleaved:   # a0 a0 a1 a1 ...: stack + reshape (mint.repeat_interleave is Ascend-only)
        emb = P.reshape(P.stack((angles, angles), -1), angles.shape[:-1] + (2 * angles.shape[-1],))
    else:
        emb = P.cat((angles, angles), -1)
    return P.cos(emb), P.sin(emb)


def _rotate_pairs(x):
    pairs = P.reshape(x, x.shape[:-1] + (x.shape[-1] // 2, 2))
    return P.reshape(P.stack((-pairs[..., 1], pairs[..., 0]), -1), x.shape)


def apply_rotary(x, cos, sin, rotary_interleaved=False):
    x32 = _fp32(x)
    rotary, dim = cos.shape[-1], x.shape[-1]
    if rotary > dim or rotary % 2:
        raise ValueError(f"apply_rotary: cos/sin have {rotary} dims but x has head dim {dim}; the rotary dims must "
                         f"be even and at most the head dim")
    part = x32[..., :rotary] if rotary < dim else x32      # partial rotary: the first R dims
    if rotary_interleaved:
        rotated = _rotate_pairs(part)
    else:
        half = rotary // 2
        rotated = P.cat((-part[..., half:], part[..., :half]), -1)
    cos, sin = (_full(P.expand_dims(_fp32(t), -2), part.shape) for t in (cos, sin))  # over the heads
    out = part * cos + rotated * sin
    if rotary < dim:
        out = P.cat((out, x32[..., rotary:]), -1)
    return _back(out, x.dtype)


def attention(q, k, v, *, causal=False, cu_seqlens=None, window=None, key_padding_mask=None, scale=None,
              impl="auto"):
    call = kernels.AttentionCall.check(q, k, v, causal, cu_seqlens, window, key_padding_mask, scale)
    return kernels.attention_kernel(impl, call)(call)


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean"):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy reduction={reduction!r}: use 'mean', 'sum' or 'none'")
    log_probs = _log_softmax32(logits, -1)
    labels = _back(labels, int64)
    keep = labels != ignore_index
    safe_labels = P.where(keep, labels, P.zeros((), int64))  # ignored rows read class 0, then get weight 0
    picked = P.gather_elements(log_probs, 1, P.expand_dims(safe_labels, 1))[:, 0]
    losses = P.where(keep, -picked, P.zeros((), float32))
    if reduction == "none":
        return losses
    total = P.sum(losses)
    if reduction == "sum":
        return total
    return total / P.maximum(P.sum(P.cast(keep, float32)), P.ones((), float32))


LOGITS_CHUNK_ELEMENTS = 1 << 26   # linear_cross_entropy's default chunk: 256 MiB of float32 logits
_matmul_tn = P.MatMul(transpose_a=True)  # g.T @ x, for the weight gradient
# The (n, V) passes of the loss use primitives without any broadcast on the (n, V) side: MindSpore 2.10's CPU kernels
# for a broadcast elementwise op are 4-20x slower than the same-shape op (measured on a (441, 151936) float32 chunk:
# functional ``logits - max`` / ``* scale`` / ``/ sums`` 460-540 ms each, ``P.Sub()`` / ``P.RealDiv()`` primitives
# 100-110 ms, same-shape ``-`` 27 ms, ``P.amax`` 150-370 ms vs ``ArgMaxWithValue`` 21-50 ms).
_row_max = P.ArgMaxWithValue(axis=-1, keep_dims=True)
_sub_rows = P.Sub()
_div_rows = P.RealDiv()
_sum_rows = P.ReduceSum(keep_dims=True)


class _LinearCrossEntropy(mindspore.nn.Cell):
    """Chunked output layer + weighted cross entropy (mmx.ops.linear_cross_entropy) as a Cell with its own bprop:
    the forward computes, chunk by chunk, the loss and both gradients (three GEMMs per chunk, as Liger-Kernel's fused
    linear cross entropy does) and the bprop scales the kept gradients by the incoming one, so no (N, V) logits are
    built and none are recomputed. One instance per call (it holds that call's gradients).

    Per chunk the (n, V) work is: logits GEMM, row max, ``exp(logits - max)``, row sums, and the gradient of the
    logits times each row's sum, ``s * (softmax - one_hot) = exps`` with the target entry replaced by
    ``exps[target] - s`` (a scatter of n values, no one-hot); the per-row factor ``weight / s`` is applied to the
    (n, C) sides of the two gradient GEMMs instead of the (n, V) buffer. In float32 that is the softmax-minus-one-hot
    gradient of the plain path up to rounding; a half-precision chunk is normalised before its cast (s can exceed
    float16's range)."""

    def __init__(self, chunk_size):
        super().__init__()
        self.chunk_size = chunk_size
        self.grads = None

    def construct(self, hidden, weight, labels, weights):
        compute_h, compute_w = _compute(hidden), _compute(weight)
        labels = _back(labels, int64)
        valid = labels != -100
        safe = P.where(valid, labels, P.zeros((), int64))
        scale_all = P.where(valid, _fp32(weights), P.zeros((), float32))
        rows = hidden.shape[0]
        total = P.zeros((), float32)
        grad_hidden, grad_weight = [], P.zeros(weight.shape, float32)
        for start in range(0, rows, self.chunk_size):
            chunk = compute_h[start:start + self.chunk_size]
            target = P.expand_dims(safe[start:start + self.chunk_size], 1)                  # (n, 1)
            scale = P.expand_dims(scale_all[start:start + self.chunk_size], 1)             # (n, 1)
            logits = _fp32(_matmul_nt(chunk, compute_w))                     # (n, V): the only big buffer
            top = _row_max(logits)[1]
            exps = P.exp(_sub_rows(logits, top))
            sums = _sum_rows(exps, -1)
            picked = P.gather_elements(logits, 1, target)
            total = total + P.sum((P.log(sums) + top - picked) * scale)
            grad_logits = P.tensor_scatter_elements(exps, target, P.gather_elements(exps, 1, target) - sums, 1)
            row_scale = scale / sums
            if chunk.dtype != float32:
                grad_logits, row_scale = P.cast(_div_rows(grad_logits, sums), chunk.dtype), scale
            grad_hidden.append(_fp32(P.matmul(grad_logits, compute_w)) * row_scale)
            grad_weight = grad_weight + _fp32(_matmul_tn(grad_logits, _back(_fp32(chunk) * row_scale, chunk.dtype)))
        self.grads = (_back(P.cat(grad_hidden, 0), hidden.dtype), _back(grad_weight, weight.dtype))
        return total

    def bprop(self, hidden, weight, labels, weights, out, dout):
        grad_hidden, grad_weight = self.grads
        self.grads = None
        return (grad_hidden * P.cast(dout, grad_hidden.dtype), grad_weight * P.cast(dout, grad_weight.dtype),
                P.zeros_like(labels), P.zeros_like(weights))


def linear_cross_entropy(hidden, weight, labels, weights, chunk_size=None):
    chunk_size = chunk_size or builtins.max(1, LOGITS_CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy(int(chunk_size))(hidden, weight, labels, weights)


# ----------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------------

def router_linear(x, weight):
    return linear(_fp32(x), _fp32(weight))


def router_topk(logits, k, normalize=True):
    probs = P.softmax(_fp32(logits), -1)
    weights, indices = P.topk(probs, k, dim=-1, largest=True, sorted=True)
    if normalize:
        weights = weights / P.sum(weights, -1, True)
    return weights, _back(indices, int64)


def moe_permute(x, indices, num_experts):
    top_k = indices.shape[1]
    flat_experts = P.cast(P.reshape(indices, (-1,)), int32)
    count = flat_experts.shape[0]
    # Sorting expert * count + slot makes every key distinct, so the unstable sort is stable within an expert.
    keys = flat_experts * count + P.arange(count, dtype=int32)
    _, order = P.sort(keys)
    order = _back(order, int64)
    permuted = index_select(x, 0, P.floor_divide(order, top_k))
    tokens_per_expert = P.cast(P.sum(P.one_hot(flat_experts, num_experts, P.ones((), int32), P.zeros((), int32)),
                              0), int64)
    return permuted, order, tokens_per_expert


def grouped_matmul(x, weight, tokens_per_expert):
    return kernels.grouped_mm(x, weight, tokens_per_expert)


def moe_unpermute(permuted, order, weights):
    tokens, top_k = weights.shape
    # inverse[i] = the permuted row holding flat copy i (token i // K, slot i % K).
    _, inverse = P.sort(P.cast(order, int32))
    copies = P.reshape(index_select(permuted, 0, P.cast(inverse, int64)), (tokens, top_k, permuted.shape[-1]))
    combined = P.sum(_fp32(copies) * P.expand_dims(_fp32(weights), -1), 1)
    return _back(combined, permuted.dtype)


def moe_experts(x, weights, indices, gate_up, down, impl="auto"):
    return kernels.moe_kernel(impl, x)(x, weights, indices, gate_up, down)
