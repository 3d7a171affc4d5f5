"""Gradients of a scalar function of backend tensors (tests/ops backward checks; mirrored on MindSpore)."""
import torch


def value_and_grad(fn, inputs):
    """(fn(*inputs), [d fn / d input for each input]) for ``fn`` returning a scalar tensor.

    ``inputs`` are floating-point tensors; they are not modified (gradients flow to detached copies).
    """
    leaves = []
    for position, tensor in enumerate(inputs):
        if not tensor.is_floating_point():
            raise TypeError(f"value_and_grad: input {position} is {tensor.dtype}; only floating-point inputs have "
                            f"gradients (close over integer tensors inside fn instead)")
        leaves.append(tensor.detach().requires_grad_(True))
    with torch.enable_grad():
        value = fn(*leaves)
        if value.numel() != 1:
            raise ValueError(f"value_and_grad: fn must return a scalar, got shape {tuple(value.shape)}")
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]
    return value.detach(), grads
