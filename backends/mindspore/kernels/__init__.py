"""Attention and MoE kernels on MindSpore, chosen by name (ARCHITECTURE rule 4); the API mirrors
``mmx.backends.torch.kernels``.

Attention kernels (``attention.py``): ``eager`` (the reference: one sequence at a time, KV heads repeated),
``math`` (the fast CPU kernel: batched matmul + additive mask + float32 softmax; varlen via a block-diagonal mask,
GQA without copying KV), ``flash_attention_score`` (``mindspore.ops.flash_attention_score``, Ascend only).
MoE kernels (``moe.py``): ``grouped`` (permute → grouped matmul → unpermute; the fused ``gmm`` on Ascend, one
matmul per expert on CPU), ``loop`` (the reference: every expert densely over all tokens, weighted).
"""

from mmx.kernels import AttentionCall, KernelTable, register  # noqa: F401  (the shared registry; kernels use them)

ATTENTION = KernelTable("attention", ("flash_attention_score", "math", "eager"))
MOE = KernelTable("moe", ("ascend_grouped", "grouped", "loop"))


def available_attention_kernels():
    """Names of the attention kernels usable on this machine and device, in registration order."""
    return ATTENTION.available()


def attention_kernel(impl, call):
    """The attention function for ``impl`` (a name or ``"auto"``) that can run ``call`` (an AttentionCall)."""
    return ATTENTION.pick(impl, (call,))


def available_moe_kernels():
    """Names of the MoE expert kernels usable on this machine and device, in registration order."""
    return MOE.available()


def moe_kernel(impl, x):
    """The MoE experts function for ``impl`` (a name or ``"auto"``) that can run on tokens ``x``."""
    return MOE.pick(impl, (x,))


from mmx.backends.mindspore.kernels import attention, moe  # noqa: E402,F401  (registration on import)
from mmx.backends.mindspore.kernels.moe import grouped_mm  # noqa: E402
