"""MoE expert kernels on MindSpore: x (T, C), routing weights/indices (T, K), gate_up (E, C, 2F), down (E, F, C)
→ (T, C). Mirrors ``mmx.backends.torch.kernels.moe``.

Every kernel computes ``sum_k weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` with ``e = indices[t, k]``.
``grouped`` permutes the token copies so each expert's rows are contiguous and runs the two expert GEMMs as grouped
matmuls (:func:`grouped_mm`, also the ``ops.grouped_matmul`` op): on Ascend the fused ``gmm`` kernel, on CPU one
2-D matmul per non-empty expert over its slice of rows (the group sizes are read on the host, as HF's expert loop
does). ``ascend_grouped`` (Ascend only; not run in this repository's CI, which has no Ascend device) permutes and
unpermutes with MindSpore's fused ``moe_token_permute`` / ``moe_token_unpermute``. ``loop`` is the reference: every
expert runs densely on all tokens and counts with the token's weight for it.
"""
import builtins

import mindspore
from mindspore import Tensor
from mindspore import ops as P

import mmx.backends.mindspore as ms_backend
from mmx.backends.mindspore.kernels import MOE, register


def grouped_mm(x, weight, tokens_per_expert):
    """x (N, Cin) grouped by expert (tokens_per_expert (E,)), weight (E, Cin, Cout) → (N, Cout); differentiable."""
    from mmx.backends.mindspore import ops  # ops imports this package; import at call time
    if x.dtype != weight.dtype:
        raise ValueError(f"grouped_matmul: x is {x.dtype} but weight is {weight.dtype}; cast one of them")
    if ms_backend.on_ascend():
        from mindspore.ops.function.math_func import gmm
        # group_list_type=1: group sizes (not cumulative ends).
        return gmm([x], [weight], group_list=P.cast(tokens_per_expert, mindspore.int64), group_list_type=1)[0]
    counts = [int(n) for n in tokens_per_expert.asnumpy().tolist()]
    if builtins.sum(counts) != x.shape[0] or len(counts) != weight.shape[0]:
        raise ValueError(f"grouped_matmul: tokens_per_expert {counts} must have one entry per expert "
                         f"({weight.shape[0]}) summing to the {x.shape[0]} rows of x")
    compute_x, compute_w = ops._compute(x), ops._compute(weight)
    pieces, start = [], 0
    for expert, count in enumerate(counts):
        if count:  # slices, not mint.split: its outputs give wrong gradients into cat
            pieces.append(P.matmul(compute_x[start:start + count], compute_w[expert]))
        start += count
    if not pieces:
        return P.zeros((0, weight.shape[-1]), x.dtype)
    return ops._back(P.cat(tuple(pieces), 0), x.dtype)


def _swiglu(gate_up):
    from mmx.backends.mindspore import ops
    half = gate_up.shape[-1] // 2
    gate, up = ops.split(gate_up, [half, half], dim=-1)  # not slicing: no bf16 gradient kernel on CPU
    return ops.silu(gate) * up


@register(MOE, "grouped", available=lambda: True)
def grouped(x, weights, indices, gate_up, down):
    from mmx.backends.mindspore import ops
    permuted, order, tokens_per_expert = ops.moe_permute(x, indices, gate_up.shape[0])
    hidden = _swiglu(grouped_mm(permuted, gate_up, tokens_per_expert))
    return ops.moe_unpermute(grouped_mm(hidden, down, tokens_per_expert), order, weights)


@register(MOE, "ascend_grouped", available=ms_backend.on_ascend)
def ascend_grouped(x, weights, indices, gate_up, down):
    """The fused Ascend path (MindSpeed-MM's on MindSpore): ops.moe_token_permute → gmm → SwiGLU → gmm →
    ops.moe_token_unpermute with the routing weights (its sorted indices are the inverse permutation)."""
    from mmx.backends.mindspore import ops
    permuted, sorted_indices = P.moe_token_permute(x, P.cast(indices, mindspore.int32))
    tokens_per_expert = P.bincount(P.cast(P.reshape(indices, (-1,)), mindspore.int32), minlength=gate_up.shape[0])
    hidden = _swiglu(grouped_mm(permuted, gate_up, tokens_per_expert))
    out = grouped_mm(hidden, down, tokens_per_expert)
    return ops._back(P.moe_token_unpermute(ops._fp32(out), sorted_indices, ops._fp32(weights)), x.dtype)


@register(MOE, "loop", available=lambda: True)
def loop(x, weights, indices, gate_up, down):
    from mmx.backends.mindspore import ops
    out = None
    for expert in range(gate_up.shape[0]):
        picked = ops._fp32(weights) * P.cast(indices == expert, mindspore.float32)
        token_weight = P.sum(picked, 1, True)  # (T, 1), 0 where the token did not pick this expert
        index = Tensor([expert], mindspore.int64)  # index_select, not w[expert]: no bf16 slice gradient on CPU
        expert_gate_up, expert_down = (ops.squeeze(ops.index_select(w, 0, index), 0) for w in (gate_up, down))
        hidden = _swiglu(ops.matmul(x, expert_gate_up))
        contribution = ops._fp32(ops.matmul(hidden, expert_down)) * token_weight
        out = contribution if out is None else out + contribution
    return ops._back(out, x.dtype)
