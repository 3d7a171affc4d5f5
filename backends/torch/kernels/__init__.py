"""Attention and MoE kernels, chosen by name (ARCHITECTURE rule 4).

Attention kernels (``attention.py``): ``eager`` (the math reference, every option), ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``), ``flash_attn`` (CUDA, when ``flash_attn`` imports),
``npu_fusion`` (``torch_npu.npu_fusion_attention``, npu devices). MoE kernels (``moe.py``): ``grouped``
(``torch.nn.functional.grouped_mm``), ``loop`` (per-expert loop, the reference), ``npu_grouped``
(``torch_npu.npu_grouped_matmul``, npu devices).
"""

from mmx.kernels import AttentionCall, KernelTable, register  # noqa: F401  (the shared registry; kernels use them)

ATTENTION = KernelTable("attention", ("npu_fusion", "flash_attn", "sdpa", "eager"))
MOE = KernelTable("moe", ("npu_grouped", "grouped", "loop"))


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


from mmx.backends.torch.kernels import attention, moe  # noqa: E402,F401  (registration on import)
from mmx.backends.torch.kernels.moe import grouped_mm  # noqa: E402
