"""MoE expert kernels: x (T, C), routing weights/indices (T, K), gate_up (E, C, 2F), down (E, F, C) → (T, C).

Every kernel computes ``sum_k weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` with ``e = indices[t, k]``:
permute the token copies so each expert's rows are contiguous, run the two expert GEMMs, unpermute with the combine.

``npu_grouped`` (torch_npu, dispatched only for tensors on ``npu``; not run in this repository's CI, which has no
Ascend device) is the fused path MindSpeed-MM uses. ``grouped_mm`` (also the ``ops.grouped_matmul`` op) uses
``torch.nn.functional.grouped_mm``. In torch 2.14 it runs on
CPU in float32, bfloat16 and float16 (not float64), and needs every row stride to be a multiple of 16 bytes (feature
sizes multiple of 4 in fp32, of 8 in bf16/fp16), so unaligned feature sizes are zero-padded and the padding sliced
off. On CUDA it needs bfloat16 and compute capability >= 8.0 (9.0 for the fast path); elsewhere grouped_mm falls back
to a per-expert loop, and the ``grouped`` kernel reports that it cannot run (``auto`` then picks ``loop``).
"""
import importlib
import importlib.util

import torch
import torch.nn.functional as F

import mmx.backends.torch as torch_backend
from mmx.backends.torch.kernels import MOE, register

_ALIGN_BYTES = 16


def _native_grouped_reason(dtype, device):
    """Why torch's grouped_mm cannot run on ``dtype``/``device`` (None when it can)."""
    if device.type == "cpu":
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"torch.nn.functional.grouped_mm on CPU takes float32/bfloat16/float16, not {dtype}"
        return None
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            return f"torch.nn.functional.grouped_mm on CUDA takes bfloat16, not {dtype}"
        if torch.cuda.get_device_capability(device) < (8, 0):
            return "torch.nn.functional.grouped_mm needs a CUDA GPU of compute capability >= 8.0"
        return None
    return f"torch.nn.functional.grouped_mm does not run on {device.type}"


def _pad_last(t, multiple):
    extra = -t.shape[-1] % multiple
    return F.pad(t, (0, extra)) if extra else t


def _loop_mm(x, weight, tokens_per_expert):
    counts = [int(n) for n in tokens_per_expert.tolist()]
    pieces = torch.split(x, counts, dim=0)
    return torch.cat([piece @ weight[expert] for expert, piece in enumerate(pieces)], dim=0)


def grouped_mm(x, weight, tokens_per_expert):
    """x (N, Cin) grouped by expert (tokens_per_expert (E,)), weight (E, Cin, Cout) → (N, Cout); differentiable."""
    if x.dtype != weight.dtype:
        raise ValueError(f"grouped_matmul: x is {x.dtype} but weight is {weight.dtype}; cast one of them")
    if _native_grouped_reason(x.dtype, x.device) is not None:
        return _loop_mm(x, weight, tokens_per_expert)
    multiple = _ALIGN_BYTES // x.element_size()
    cout = weight.shape[-1]
    padded_x = _pad_last(x, multiple).contiguous()
    padded_w = _pad_last(weight, multiple)                                      # pad Cout
    padded_w = _pad_last(padded_w.transpose(1, 2), multiple).transpose(1, 2).contiguous()  # pad Cin
    offsets = torch.cumsum(tokens_per_expert, dim=0).to(device=x.device, dtype=torch.int32)
    out = F.grouped_mm(padded_x, padded_w, offs=offsets)
    return out[:, :cout] if out.shape[-1] != cout else out


def _swiglu(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _experts(x, weights, indices, gate_up, down, matmul):
    from mmx.backends.torch import ops  # ops imports this package; import at call time
    permuted, order, tokens_per_expert = ops.moe_permute(x, indices, gate_up.shape[0])
    hidden = _swiglu(matmul(permuted, gate_up, tokens_per_expert))
    return ops.moe_unpermute(matmul(hidden, down, tokens_per_expert), order, weights)


@register(MOE, "grouped", available=lambda: True,
          supports=lambda x: _native_grouped_reason(x.dtype, x.device))
def grouped(x, weights, indices, gate_up, down):
    return _experts(x, weights, indices, gate_up, down, grouped_mm)


@register(MOE, "loop", available=lambda: True)
def loop(x, weights, indices, gate_up, down):
    return _experts(x, weights, indices, gate_up, down, _loop_mm)


def _npu_available():
    return torch_backend.on_ascend() and importlib.util.find_spec("torch_npu") is not None


def _npu_supports(x):
    return None if x.device.type == "npu" else f"npu_grouped runs on npu tensors, these are on {x.device}"


def _npu_mm(x, weight, tokens_per_expert):
    torch_npu = importlib.import_module("torch_npu")
    # group_list_type=0: cumulative row ends per expert; split_item=2: one output tensor for all groups.
    ends = torch.cumsum(tokens_per_expert, dim=0).to(torch.int64)
    return torch_npu.npu_grouped_matmul([x], [weight], group_list=ends, split_item=2, group_type=0,
                                        group_list_type=0)[0]


@register(MOE, "npu_grouped", available=_npu_available, supports=_npu_supports)
def npu_grouped(x, weights, indices, gate_up, down):
    """MindSpeed-MM's fused NPU path: npu_moe_token_permute → npu_grouped_matmul → SwiGLU → npu_grouped_matmul →
    npu_moe_token_unpermute with the routing weights (its sorted indices are the inverse permutation)."""
    torch_npu = importlib.import_module("torch_npu")
    permuted, sorted_indices = torch_npu.npu_moe_token_permute(x, indices.to(torch.int32))
    tokens_per_expert = torch.bincount(indices.reshape(-1), minlength=gate_up.shape[0])
    hidden = _swiglu(_npu_mm(permuted, gate_up, tokens_per_expert))
    out = _npu_mm(hidden, down, tokens_per_expert)
    combined = torch_npu.npu_moe_token_unpermute(out.to(weights.dtype), sorted_indices, weights)
    return combined.to(x.dtype)
