"""Modules for model code on torch: ``Module`` is a real ``torch.nn.Module``; the names are ``mmx.nn``'s
``_BACKEND_NAMES`` in that order, mirrored by ``mmx.backends.mindspore.nn``.

State-dict keys are the dotted attribute paths (``layers.0.self_attn.q_proj.weight``), parameters and persistent
buffers, identical to the MindSpore backend's, so checkpoints are backend-neutral.
"""
import contextlib

import numpy as np
import torch

import mmx.backends.torch as torch_backend


class Module(torch.nn.Module):
    """Base class of mmx models and layers: subclasses define ``__init__`` and ``forward``."""


def Parameter(tensor, requires_grad=True):  # noqa: N802 - reads as the class it builds in model code
    """A trainable tensor attribute of a Module (a ``torch.nn.Parameter``)."""
    return torch.nn.Parameter(tensor, requires_grad=requires_grad)


ModuleDict = torch.nn.ModuleDict
ModuleList = torch.nn.ModuleList


def state_dict(module):
    """{dotted name: tensor} of the parameters and persistent buffers of ``module`` (detached, not copied)."""
    return dict(module.state_dict())


def load_state_dict(module, tensors, strict=True):
    """Copy ``tensors`` ({name: tensor or numpy array}) into ``module``'s parameters and buffers, casting to their
    dtype. Returns (missing, unexpected) name lists; with ``strict`` either being non-empty is an error."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if strict and (missing or unexpected):
        raise KeyError(f"load_state_dict into {type(module).__name__}: {len(missing)} missing "
                       f"{missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]} "
                       f"(wrong model config or checkpoint? pass strict=False to load a subset)")
    wrong_shape = [f"{name}: checkpoint {tuple(tensors[name].shape)} vs model {tuple(expected[name].shape)}"
                   for name in expected if name in tensors and tuple(tensors[name].shape) != tuple(expected[name].shape)]
    if wrong_shape:
        raise ValueError(f"load_state_dict into {type(module).__name__}: shape mismatch for "
                         f"{len(wrong_shape)} tensors: {wrong_shape[:20]}")
    with torch.no_grad():
        for name, target in expected.items():
            if name in tensors:
                value = tensors[name]
                if isinstance(value, np.ndarray):
                    value = torch_backend.ops.tensor(value)
                target.copy_(value)
    return missing, unexpected


def named_parameters(module):
    """[(dotted name, Parameter)] of every parameter of ``module``, in registration order."""
    return list(module.named_parameters())


def set_requires_grad(param, flag):
    """Freeze (False) or unfreeze (True) ``param``."""
    param.requires_grad_(bool(flag))


def to_device(module, device):
    """Move ``module``'s parameters and buffers to ``device`` (``"cpu"``, ``"cuda:0"``, ...); returns it."""
    return module.to(torch.device(device))


def inference_mode():
    """A context manager without autograd bookkeeping (``torch.inference_mode``) for generation."""
    return torch.inference_mode()


@contextlib.contextmanager
def empty_init():
    """Parameters created inside live on torch's meta device (shape and dtype, no storage) until
    :func:`fill_parameter` gives each its values; ops' creation functions use the backend device, so it is switched
    to meta for the block."""
    previous = torch_backend._device  # noqa: SLF001 - one package
    torch_backend._device = torch.device("meta")  # noqa: SLF001
    try:
        yield
    finally:
        torch_backend._device = previous  # noqa: SLF001


def fill_parameter(module, name, value):
    """Replace the (meta or real) parameter ``name`` of ``module`` by one holding ``value`` (numpy array of its
    shape) in its dtype on the backend device, keeping ``requires_grad``."""
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    old = owner._parameters[leaf]  # noqa: SLF001 - the slot itself is replaced (meta tensors cannot be copied into)
    if tuple(np.shape(value)) != tuple(old.shape):
        raise ValueError(f"fill_parameter: {name} has shape {tuple(np.shape(value))} but the model expects "
                         f"{tuple(old.shape)}; the checkpoint and the config disagree")
    data = torch_backend.ops.tensor(np.asarray(value)).to(old.dtype)
    owner._parameters[leaf] = torch.nn.Parameter(data, requires_grad=old.requires_grad)  # noqa: SLF001

