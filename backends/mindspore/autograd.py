"""Gradients of a scalar function of backend tensors (tests/ops backward checks), mirroring the torch backend."""
import mindspore


def value_and_grad(fn, inputs):
    """(fn(*inputs), [d fn / d input for each input]) for ``fn`` returning a scalar tensor (``mindspore.value_and_grad``
    over every input position). ``inputs`` are floating-point tensors; they are not modified."""
    inputs = tuple(inputs)
    for position, tensor in enumerate(inputs):
        if not mindspore.ops.is_floating_point(tensor):
            raise TypeError(f"value_and_grad: input {position} is {tensor.dtype}; only floating-point inputs have "
                            f"gradients (close over integer tensors inside fn instead)")
    value, grads = mindspore.value_and_grad(fn, grad_position=tuple(range(len(inputs))))(*inputs)
    if value.size != 1:
        raise ValueError(f"value_and_grad: fn must return a scalar, got shape {tuple(value.shape)}")
    grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
    return value, grads
