"""Modules for model code on MindSpore: ``Module`` is a real ``mindspore.nn.Cell``; the names are ``mmx.nn``'s
``_BACKEND_NAMES`` in that order, mirrored from ``mmx.backends.torch.nn``.

State-dict keys are the dotted attribute paths (``text_decoder.decoder.layers.3.mlp.linear_fc1.weight``), identical
to torch's ``state_dict()`` keys, so checkpoints are backend-neutral. They are computed by walking the cells
(own parameters in registration order, then child cells in order, as torch does) rather than read from
``Parameter.name``: MindSpore's auto-prefix renames a parameter only when its cell is attached to a parent, so a
parameter assigned to an already-attached child keeps a short name (``bias`` instead of ``head.bias``).
:func:`named_parameters` writes the walked names back into ``Parameter.name`` so MindSpore's own checkpoint and
optimizer code, which key on it, see the same names.
"""
import contextlib

import mindspore
import numpy as np
from mindspore import Tensor
from mindspore import ops as P

import mmx.backends.mindspore as ms_backend


class Module(mindspore.nn.Cell):
    """Base class of mmx models and layers: subclasses define ``__init__`` and ``forward``; ``construct`` (what
    MindSpore calls) runs ``forward``."""

    def __init__(self):
        super().__init__(auto_prefix=True)

    def construct(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def Parameter(tensor, requires_grad=True):  # noqa: N802 - reads as the class it builds in model code
    """A trainable tensor attribute of a Module (a ``mindspore.Parameter``)."""
    return mindspore.Parameter(tensor, requires_grad=requires_grad)


class ModuleDict(mindspore.nn.CellDict):
    """Child modules under string keys (e.g. global layer indices ``"0", "1", ...``), in insertion order."""


class ModuleList(mindspore.nn.CellList):
    """Child modules indexed ``0 .. n-1``."""


def _walk(cell, prefix=""):
    """(dotted name, Parameter) for every parameter slot, shared parameters once per slot (like torch's
    state_dict); attributes set to None are skipped."""
    for name, param in cell._params.items():  # noqa: SLF001 - MindSpore keeps registration order here
        if param is not None:
            yield prefix + name, param
    for name, child in cell._cells.items():  # noqa: SLF001
        if child is not None:
            yield from _walk(child, f"{prefix}{name}.")


def state_dict(module):
    """{dotted name: Parameter} of ``module`` (not copied; a tied parameter appears under each of its names)."""
    return dict(_walk(module))


def load_state_dict(module, tensors, strict=True):
    """Copy ``tensors`` ({name: tensor or numpy array}) into ``module``'s parameters, casting to their dtype.
    Returns (missing, unexpected) name lists; with ``strict`` either being non-empty is an error.

    The copy is ``ops.assign`` (in-place Tensor methods silently do nothing in PyNative); see :func:`_copy_into`."""
    expected = state_dict(module)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if strict and (missing or unexpected):
        raise KeyError(f"load_state_dict into {type(module).__name__}: {len(missing)} missing "
                       f"{missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]} "
                       f"(wrong model config or checkpoint? pass strict=False to load a subset)")
    wrong_shape = [f"{name}: checkpoint {tuple(tensors[name].shape)} vs model {tuple(target.shape)}"
                   for name, target in expected.items()
                   if name in tensors and tuple(tensors[name].shape) != tuple(target.shape)]
    if wrong_shape:
        raise ValueError(f"load_state_dict into {type(module).__name__}: shape mismatch for "
                         f"{len(wrong_shape)} tensors: {wrong_shape[:20]}")
    for name, target in expected.items():
        if name in tensors:
            value = tensors[name]
            if not isinstance(value, Tensor):
                value = ms_backend.ops.tensor(np.asarray(value))
            _copy_into(target, ms_backend.ops.cast(value, target.dtype))
    return missing, unexpected


def _copy_into(param, value):
    """Write ``value`` (same shape and dtype) into ``param`` in place. ``ops.assign`` has no bf16 CPU kernel, so bf16
    on CPU goes through ``set_data`` with a host copy (``set_data`` alone would alias ``value``'s storage)."""
    if param.dtype == mindspore.bfloat16 and not ms_backend.on_ascend():
        param.set_data(ms_backend.ops._detached_copy(value))  # noqa: SLF001 - one package
    else:
        P.assign(param, value)


def named_parameters(module):
    """[(dotted name, Parameter)] of every parameter of ``module`` in registration order, each once."""
    seen, out = set(), []
    for name, param in _walk(module):
        if id(param) not in seen:
            seen.add(id(param))
            if param.name != name:
                param.name = name
            out.append((name, param))
    return out


def set_requires_grad(param, flag):
    """Freeze (False) or unfreeze (True) ``param``."""
    param.requires_grad = bool(flag)


def to_device(module, device):
    """MindSpore places every tensor on the process device (``MMX_DEVICE``); ``device`` must be that one."""
    if ms_backend._parse(device) != ms_backend._parse(ms_backend.device()):  # noqa: SLF001 - one package
        raise ValueError(f"the mindspore backend runs on {ms_backend.device()} for the whole process and cannot move "
                         f"a module to {device!r}; start the process with MMX_DEVICE={device}")
    return module


@contextlib.contextmanager
def inference_mode():
    """A context manager without autograd bookkeeping (MindSpore's ``_no_grad``) for generation."""
    with mindspore._no_grad():  # noqa: SLF001 - the public no-grad context of MindSpore 2.x PyNative
        yield


@contextlib.contextmanager
def empty_init():
    """Parameters created inside hold MindSpore lazy initializers (shape and dtype, no storage) until
    :func:`fill_parameter` gives each its values: ops' zeros / ones / full return ``initializer`` tensors for the
    block."""
    previous = ms_backend.ops._EMPTY_INIT[0]  # noqa: SLF001 - one package
    ms_backend.ops._EMPTY_INIT[0] = True  # noqa: SLF001
    try:
        yield
    finally:
        ms_backend.ops._EMPTY_INIT[0] = previous  # noqa: SLF001


def fill_parameter(module, name, value):
    """Give the parameter ``name`` of ``module`` the values of ``value`` (numpy array of its shape) in its dtype
    (``set_data`` with a fresh tensor: a lazy parameter gets its first storage)."""
    params = state_dict(module)
    if name not in params:
        raise KeyError(f"fill_parameter: {type(module).__name__} has no parameter {name!r}")
    param = params[name]
    if tuple(np.shape(value)) != tuple(param.shape):
        raise ValueError(f"fill_parameter: {name} has shape {tuple(np.shape(value))} but the model expects "
                         f"{tuple(param.shape)}; the checkpoint and the config disagree")
    param.set_data(ms_backend.ops.tensor(np.asarray(value), param.dtype))

