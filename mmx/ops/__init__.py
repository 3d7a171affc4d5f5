"""mmx.ops — the contract every backend implements (ARCHITECTURE rule 3).

Model code calls these functions and Python's arithmetic operators (``+ - * / @``, unary ``-``, basic slicing with
ints, slices and ``...``, ``x.shape``, ``x.dtype``) on backend tensors, and nothing else. Each function below has a
twin of the same name and signature, in the same order, in ``mmx/backends/<name>/ops.py``; ``tests/ops`` checks the
signatures and the numbers (forward and backward) against numpy references.

Shapes: ``B`` batch, ``S`` sequence, ``T`` total tokens of a packed (varlen) batch, ``H`` heads, ``D`` head dim,
``E`` experts, ``K`` experts per token. Varlen tensors come with ``cu_seqlens`` (N+1,) int32, the cumulative
sequence lengths starting at 0.

Dtypes are ``ops.float32``, ``ops.float16``, ``ops.bfloat16``, ``ops.int32``, ``ops.int64``, ``ops.bool_``
(the backend's own dtype objects, resolved on first use).
"""
from mmx import backend as _backend

_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "bool_")


def __getattr__(attr):
    # Dtypes are the backend's objects; resolving them loads (and locks) the backend.
    if attr in _DTYPES:
        return getattr(_backend.get().ops, attr)
    raise AttributeError(f"mmx.ops has no attribute {attr!r}")


def _ops():
    return _backend.get().ops


# ----------------------------------------------------------------------------------------------------------------
# Tensors: creation, interop, dtype
# ----------------------------------------------------------------------------------------------------------------

def tensor(data, dtype=None):
    """A backend tensor on the default device from a numpy array, scalar or nested list.

    numpy bfloat16 (``ml_dtypes.bfloat16``) arrays become bfloat16 tensors; ``dtype`` casts after creation.
    """
    return _ops().tensor(data, dtype)


def to_numpy(x):
    """A numpy copy of ``x`` on the host; bfloat16 becomes ``ml_dtypes.bfloat16``. Detached from autograd."""
    return _ops().to_numpy(x)


def zeros(shape, dtype=None):
    """Zeros of ``shape`` (tuple), default float32."""
    return _ops().zeros(shape, dtype)


def ones(shape, dtype=None):
    """Ones of ``shape`` (tuple), default float32."""
    return _ops().ones(shape, dtype)


def full(shape, value, dtype=None):
    """``value`` everywhere in ``shape``, default float32."""
    return _ops().full(shape, value, dtype)


def zeros_like(x):
    """Zeros with ``x``'s shape and dtype."""
    return _ops().zeros_like(x)


def arange(start, end=None, step=1, dtype=None):
    """``[start, end)`` in steps of ``step`` (``arange(n)`` = ``[0, n)``), default int64."""
    return _ops().arange(start, end, step, dtype)


def randn(shape, dtype=None, seed=None):
    """Standard-normal samples of ``shape``; ``seed`` makes the draw reproducible on this backend."""
    return _ops().randn(shape, dtype, seed)


def cast(x, dtype):
    """``x`` converted to ``dtype`` (differentiable for float→float)."""
    return _ops().cast(x, dtype)


def stop_gradient(x):
    """``x`` with no gradient flowing back through it (torch ``detach``)."""
    return _ops().stop_gradient(x)


# ----------------------------------------------------------------------------------------------------------------
# Shape and indexing
# ----------------------------------------------------------------------------------------------------------------

def reshape(x, shape):
    """``x`` with a new ``shape`` (one entry may be -1)."""
    return _ops().reshape(x, shape)


def transpose(x, dim0, dim1):
    """``x`` with ``dim0`` and ``dim1`` swapped."""
    return _ops().transpose(x, dim0, dim1)


def permute(x, dims):
    """``x`` with its dimensions reordered as ``dims``."""
    return _ops().permute(x, dims)


def unsqueeze(x, dim):
    """``x`` with a new size-1 dimension at ``dim``."""
    return _ops().unsqueeze(x, dim)


def squeeze(x, dim):
    """``x`` without its size-1 dimension ``dim``."""
    return _ops().squeeze(x, dim)


def expand(x, shape):
    """``x`` broadcast to ``shape`` (-1 keeps a dimension)."""
    return _ops().expand(x, shape)


def repeat_interleave(x, repeats, dim):
    """Each slice of ``x`` along ``dim`` repeated ``repeats`` (int) times in place: (a, b) → (a, a, b, b)."""
    return _ops().repeat_interleave(x, repeats, dim)


def cat(xs, dim=0):
    """Concatenation of the tensors in ``xs`` along ``dim``."""
    return _ops().cat(xs, dim)


def stack(xs, dim=0):
    """The tensors in ``xs`` (same shape) stacked along a new dimension ``dim``."""
    return _ops().stack(xs, dim)


def split(x, sizes, dim=0):
    """``x`` cut along ``dim`` into pieces of ``sizes`` (list of ints, summing to ``x.shape[dim]``); a list.

    Gradients through split→cat are exact on every backend (MindSpore's ``mint.split`` gets them wrong on CPU).
    """
    return _ops().split(x, sizes, dim)


def gather(x, dim, index):
    """``out[i][j] = x[i][index[i][j]]`` for ``dim=1`` (torch.gather semantics); ``index`` int64, x's rank."""
    return _ops().gather(x, dim, index)


def index_select(x, dim, index):
    """The slices of ``x`` along ``dim`` at ``index`` (1-D int), in that order."""
    return _ops().index_select(x, dim, index)


def scatter(x, dim, index, src):
    """A copy of ``x`` with ``out[i][index[i][j]] = src[i][j]`` for ``dim=1`` (torch.scatter, out of place)."""
    return _ops().scatter(x, dim, index, src)


def masked_scatter(x, mask, src):
    """A copy of ``x`` (N, ..., C) whose positions where ``mask`` (broadcastable bool) is true take, in row-major
    order, consecutive elements of ``src``. Differentiable w.r.t. ``x`` and ``src``. Used to insert image features
    into the token embeddings."""
    return _ops().masked_scatter(x, mask, src)


def where(condition, x, y):
    """``x`` where ``condition`` is true, else ``y`` (broadcasting; ``x``/``y`` may be Python scalars)."""
    return _ops().where(condition, x, y)


def tril(x, diagonal=0):
    """The lower triangle of the last two dimensions of ``x``; the rest zero (false)."""
    return _ops().tril(x, diagonal)


def topk(x, k, dim=-1):
    """(values, indices) of the ``k`` largest entries of ``x`` along ``dim``, largest first; indices int64."""
    return _ops().topk(x, k, dim)


def topk_indices(x, k):
    """Indices (..., K) int64 of the ``k`` largest entries of ``x`` (..., N) along the last dim, largest first and,
    among equal values, the lower index first: one deterministic choice on every backend and device (``topk``'s tie
    order is the kernel's). No gradient (routers: the chosen experts)."""
    return _ops().topk_indices(x, k)


def cumsum(x, dim):
    """Cumulative sum of ``x`` along ``dim``."""
    return _ops().cumsum(x, dim)


def argmax(x, dim):
    """Index (int64) of the largest entry of ``x`` along ``dim``; the first one on ties."""
    return _ops().argmax(x, dim)


# ----------------------------------------------------------------------------------------------------------------
# Elementwise and reductions
# ----------------------------------------------------------------------------------------------------------------

def exp(x):
    """e**x."""
    return _ops().exp(x)


def log(x):
    """Natural logarithm."""
    return _ops().log(x)


def sqrt(x):
    """Square root."""
    return _ops().sqrt(x)


def rsqrt(x):
    """1 / sqrt(x)."""
    return _ops().rsqrt(x)


def cos(x):
    """Cosine."""
    return _ops().cos(x)


def sin(x):
    """Sine."""
    return _ops().sin(x)


def sigmoid(x):
    """1 / (1 + e**-x)."""
    return _ops().sigmoid(x)


def silu(x):
    """x * sigmoid(x)."""
    return _ops().silu(x)


def gelu(x, approximate="none"):
    """GELU: ``approximate="none"`` the erf form, ``"tanh"`` the tanh approximation (HF ``gelu_pytorch_tanh``)."""
    return _ops().gelu(x, approximate)


def quick_gelu(x):
    """x * sigmoid(1.702 x) (CLIP / Qwen2-VL vision MLP)."""
    return _ops().quick_gelu(x)


def dropout(x, p):
    """Inverted dropout (training only): each element of ``x`` zeroed with probability ``p``, the others scaled by
    1 / (1 - p), so the expectation is ``x``; the mask comes from the backend's global generator (seeded by the
    trainer, saved with the checkpoints' RNG state) and the backward multiplies by the same mask. ``p`` = 0: ``x``."""
    return _ops().dropout(x, p)


def sum(x, dim=None, keepdim=False):  # noqa: A001 - the contract mirrors the frameworks' names
    """Sum over ``dim`` (int, tuple or None for all)."""
    return _ops().sum(x, dim, keepdim)


def mean(x, dim=None, keepdim=False):
    """Mean over ``dim`` (int, tuple or None for all)."""
    return _ops().mean(x, dim, keepdim)


def amax(x, dim=None, keepdim=False):
    """Maximum over ``dim`` (int, tuple or None for all)."""
    return _ops().amax(x, dim, keepdim)


def softmax(x, dim=-1):
    """Softmax along ``dim``, computed in float32 and returned in ``x``'s dtype."""
    return _ops().softmax(x, dim)


def log_softmax(x, dim=-1):
    """Log-softmax along ``dim``, computed in float32 and returned in ``x``'s dtype."""
    return _ops().log_softmax(x, dim)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------

def linear(x, weight, bias=None):
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out,) → (..., out)."""
    return _ops().linear(x, weight, bias)


def matmul(a, b):
    """Batched matrix product (..., n, k) @ (..., k, m) → (..., n, m)."""
    return _ops().matmul(a, b)


def embedding(ids, weight):
    """Rows of ``weight`` (V, C) at ``ids`` (any shape, int) → ids.shape + (C,)."""
    return _ops().embedding(ids, weight)


def rms_norm(x, weight, eps):
    """``x / sqrt(mean(x**2, -1) + eps) * weight``; the statistics in float32, the result in ``x``'s dtype
    (HF Qwen2RMSNorm: normalised x is cast back to the input dtype before the weight multiply)."""
    return _ops().rms_norm(x, weight, eps)


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last dimension of x (..., C) with weight/bias (C,)."""
    return _ops().layer_norm(x, weight, bias, eps)


def rotary_cos_sin(position_ids, inv_freq, mrope_section=None, mrope_interleaved=False, rotary_interleaved=False):
    """cos and sin tables (float32) for rotary embeddings.

    1-D: ``position_ids`` (..., S) int → cos/sin (..., S, 2 * len(inv_freq)) where the angle is
    ``position * inv_freq`` repeated twice along the last dim: ``cat(angles, angles)`` (the rotate-half convention),
    or with ``rotary_interleaved`` each angle twice in place, ``a0 a0 a1 a1 ...`` (GPT-J pairs; GLM-4.1V's text
    ``repeat_interleave(2)``).
    Multimodal (``mrope_section`` = [t, h, w], summing to len(inv_freq)): ``position_ids`` (3, B, S) holds the
    temporal, height and width position of each token, and each frequency takes its angle from one of those rows
    (``mmx.rope.mrope_frequency_rows``): contiguous bands, the first t frequencies temporal, the next h height, the
    last w width (HF ``apply_multimodal_rotary_pos_emb``), or with ``mrope_interleaved`` the Qwen3-VL pattern
    T H W T H W ... → cos/sin (B, S, 2 * len(inv_freq)). ``inv_freq`` is a float32 tensor (D/2,).
    """
    return _ops().rotary_cos_sin(position_ids, inv_freq, mrope_section, mrope_interleaved, rotary_interleaved)


def apply_rotary(x, cos, sin, rotary_interleaved=False):
    """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``: x (B, S, H, D) with cos/sin
    (B, S, R), or x (T, H, D) with cos/sin (T, R). Computed in float32, returned in ``x``'s dtype.

    ``R < D`` (partial rotary, GLM's ``partial_rotary_factor``): only the first R dims of each head rotate, the
    other D - R pass through unchanged. ``rotary_interleaved``: GPT-J / RoFormer pairs (x0, x1), (x2, x3), ...
    rotate together, ``rotate(x) = (-x1, x0, -x3, x2, ...)`` (HF ``rotate_half_llm``), with cos/sin from
    ``rotary_cos_sin(..., rotary_interleaved=True)``."""
    return _ops().apply_rotary(x, cos, sin, rotary_interleaved)


def attention(q, k, v, *, causal=False, cu_seqlens=None, window=None, key_padding_mask=None, scale=None,
              impl="auto"):
    """Scaled dot-product attention, the kernel chosen by name (``impl``; see ``backend.kernels``).

    Dense: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) → (B, Sq, Hq, D). Varlen: q (T, Hq, D), k/v (T, Hkv, D) and
    ``cu_seqlens`` (N+1,) int32, a tensor or numpy (host bounds: no device -> host read): each of the N sequences
    attends only to itself (block-diagonal).
    GQA when Hq is a multiple of Hkv (query head h uses KV head h // (Hq / Hkv)).
    ``causal``: query i sees keys j <= i + (Sk - Sq) (bottom-right aligned, so a decode step with Sq=1 sees all
    cached keys). ``window``: with ``causal``, key j is visible only if i + (Sk - Sq) - j < window (sliding window).
    ``key_padding_mask`` (B, Sk) bool/int, true for real tokens: padded keys are never attended to; a query row
    with no visible key returns zeros. ``scale`` defaults to D**-0.5.
    """
    return _ops().attention(q, k, v, causal=causal, cu_seqlens=cu_seqlens, window=window,
                            key_padding_mask=key_padding_mask, scale=scale, impl=impl)


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean"):
    """Cross entropy of logits (N, V) (computed in float32) against labels (N,) int.

    Entries with ``labels == ignore_index`` contribute nothing; ``reduction`` is ``"mean"`` (over the
    non-ignored entries; 0 when there are none), ``"sum"``, or ``"none"`` ((N,), zeros at ignored entries).
    """
    return _ops().cross_entropy(logits, labels, ignore_index, reduction)


def linear_cross_entropy(hidden, weight, labels, weights, chunk_size=None):
    """``sum(cross_entropy(linear(hidden, weight), labels) * weights)`` without the (N, V) logits: hidden (N, C),
    weight (V, C) (the output layer), labels (N,) int, weights (N,) float32 → scalar float32.

    Rows go through in chunks of ``chunk_size`` (default: as many rows as 256 MiB of float32 logits hold, 441 at a
    151,936 vocabulary): each chunk's logits are computed (in the dtype ``linear`` would use,
    then float32), reduced to its log-sum-exp and label logit, and dropped; the backward (gradients of ``hidden`` and
    ``weight``) is the same function of the same chunks, so the peak is one chunk's (chunk_size, V) float32 instead of
    the whole (N, V) and its log-softmax copies. Labels equal to -100 (or any label with weight 0) contribute 0.
    """
    return _ops().linear_cross_entropy(hidden, weight, labels, weights, chunk_size)


# ----------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------------

def router_linear(x, weight):
    """Router logits in float32: x (T, C) @ weight (E, C).T with both cast to float32, whatever their dtype and
    whatever mixed-precision context the step runs in (torch's bf16 autocast included) → (T, E) float32 (GLM-4.5V's
    router, HF ``F.linear(x.float(), W.float())``)."""
    return _ops().router_linear(x, weight)


def router_topk(logits, k, normalize=True):
    """Softmax router: probabilities of logits (T, E) in float32, the top ``k`` per token → (weights (T, K)
    float32, expert indices (T, K) int64); ``normalize`` rescales each token's K weights to sum to 1."""
    return _ops().router_topk(logits, k, normalize)


def moe_permute(x, indices, num_experts):
    """Group token copies by expert: x (T, C), indices (T, K) → (permuted (T*K, C) ordered by expert, stable
    within an expert; ``order`` (T*K,) int64, the flat (token*K + slot) index of each permuted row;
    tokens_per_expert (E,) int64)."""
    return _ops().moe_permute(x, indices, num_experts)


def grouped_matmul(x, weight, tokens_per_expert):
    """Per-expert matmul on expert-grouped rows: x (N, Cin) where the first tokens_per_expert[0] rows belong to
    expert 0 and so on, weight (E, Cin, Cout) → (N, Cout)."""
    return _ops().grouped_matmul(x, weight, tokens_per_expert)


def moe_unpermute(permuted, order, weights):
    """Inverse of :func:`moe_permute` with the combine: permuted (T*K, C), order (T*K,), weights (T, K) → (T, C),
    each token the weighted sum of its K expert outputs."""
    return _ops().moe_unpermute(permuted, order, weights)


def moe_experts(x, weights, indices, gate_up, down, impl="auto"):
    """A SwiGLU expert layer on routed tokens, the kernel chosen by name (``grouped`` / ``loop``).

    x (T, C), weights/indices (T, K) from :func:`router_topk`, gate_up (E, C, 2F) (gate then up along the last
    dim), down (E, F, C) → (T, C) = sum_k weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = indices[t, k].
    """
    return _ops().moe_experts(x, weights, indices, gate_up, down, impl=impl)
