"""The PyTorch backend (CPU, CUDA, Ascend through torch_npu), installed as ``mmx.backends.torch``.

Submodules, mirrored by ``mmx.backends.mindspore`` with the same names and public functions in the same order:
``ops`` (the :mod:`mmx.ops` contract), ``nn`` (Module, Parameter, containers, state dicts), ``kernels`` (attention
and MoE implementations looked up by name), ``autograd`` (``value_and_grad``), ``probe`` (version and devices without
locking the backend). ``train``, ``io`` and ``distributed`` belong to the trainer / checkpoint code and are imported
on first use.

The device is chosen once from ``MMX_DEVICE`` (``cpu`` by default; ``cuda``, ``cuda:1``, ``npu``, ``npu:0``) or by
:func:`set_device`; ``ops`` creates every new tensor there. ``torch_npu`` is imported only when an npu device is
asked for: importing it without Ascend CANN breaks ``import torch`` itself.
"""
import importlib
import os

import torch

NAME = "torch"
DEVICE_KINDS = ("cpu", "cuda", "npu")

_device = None


def _resolve(name):
    """A ``torch.device`` for ``name``, importing torch_npu first for npu; a clear error when it is unusable."""
    kind = name.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device {name!r} (MMX_DEVICE or set_device): use one of "
                         f"{', '.join(DEVICE_KINDS)}, optionally with an index such as cuda:1")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but torch {torch.__version__} sees no CUDA device; "
                           f"use MMX_DEVICE=cpu or run on a machine with a GPU")
    if kind == "npu":
        try:
            importlib.import_module("torch_npu")
        except ImportError as err:
            raise RuntimeError(f"device {name!r} needs torch_npu ({err}); install the torch_npu build matching "
                               f"torch {torch.__version__} and Ascend CANN, or use MMX_DEVICE=cpu") from err
    return torch.device(name)


def set_device(name):
    """Make ``name`` (``cpu``, ``cuda[:i]``, ``npu[:i]``) the device new tensors are created on."""
    global _device
    _device = _resolve(name)


def device():
    """The device new tensors are created on, as a string (``"cpu"``, ``"cuda:0"``, ...)."""
    global _device
    if _device is None:
        _device = _resolve(os.environ.get("MMX_DEVICE") or "cpu")
    return str(_device)


def on_ascend():
    """True when computing on an Ascend NPU through torch_npu (selects the npu kernels inside this backend)."""
    return device().startswith("npu")


def __getattr__(attr):
    # train/io/distributed are written by other parts of mmx; importing them lazily keeps this package importable
    # while they change, and keeps their imports (torch.distributed, safetensors) off the path of code that never
    # uses them.
    if attr in ("train", "io", "distributed"):
        return importlib.import_module(f"{__name__}.{attr}")
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


from mmx.backends.torch import autograd, kernels, nn, ops, probe  # noqa: E402  (set_device/device must exist first)
