"""The MindSpore backend (``MMX_BACKEND=mindspore``): installed as ``mmx.backends.mindspore``.

Same submodules and public functions as ``mmx.backends.torch``: ``ops`` (the :mod:`mmx.ops` contract), ``nn``
(Module = ``mindspore.nn.Cell``), ``kernels`` (attention / MoE implementations by name), ``autograd``
(``value_and_grad``), ``probe`` (version and devices, without locking the backend); ``train`` and ``io`` (the
trainer's and checkpoint code's) are imported on first use.

The device comes from ``MMX_DEVICE`` (``cpu`` default; ``ascend`` / ``npu``, ``gpu``; an optional ``:index``) and is
process-wide in MindSpore: :func:`set_device` may change it only before the first tensor is computed. Execution is
PyNative (eager), as in torch. On CPU, MindSpore 2.10 computes bfloat16 through float32 (see ``ops`` docstring).

On CPU, kernels are launched synchronously (``mindspore.runtime.launch_blocking()``): PyNative's asynchronous launch
queue only adds thread hand-offs when host and "device" are the same cores — a decoder block's forward + backward
runs ~4-5x faster synchronous (bench/mindspore_block.py; 195 → 50 ms in ARCHITECTURE.md's probe), and errors are
raised at the op that caused them. ``MMX_MINDSPORE_ASYNC=1`` keeps MindSpore's asynchronous default.
"""
import importlib
import os

import mindspore

NAME = "mindspore"

# mmx device names → MindSpore device targets.
_TARGETS = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend", "gpu": "GPU", "cuda": "GPU"}
_current = None


def _parse(name):
    kind, _, index = str(name).strip().lower().partition(":")
    if kind not in _TARGETS or (index and not index.isdigit()):
        raise ValueError(f"unknown device {name!r} for the mindspore backend: use cpu, ascend[:N] (alias npu) or "
                         f"gpu[:N] (MMX_DEVICE env or --device)")
    return _TARGETS[kind], int(index or 0)


def set_device(name):
    """Run on ``name`` (``cpu``, ``ascend``, ``ascend:1``, ``npu:0``, ``gpu``); process-wide in MindSpore."""
    global _current
    target, index = _parse(name)
    if _current == (target, index):
        return
    try:
        if target == "CPU":
            mindspore.set_device(target)
        else:
            mindspore.set_device(target, index)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise RuntimeError(f"mindspore cannot use device {name!r}: {first_line} Use a machine (and a MindSpore build) "
                           f"with that device, or MMX_DEVICE=cpu; MindSpore fixes the device once per process, so set "
                           f"MMX_DEVICE before starting.") from err
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    if target == "CPU" and os.environ.get("MMX_MINDSPORE_ASYNC", "0") != "1":
        mindspore.runtime.launch_blocking()
    _current = (target, index)


def device():
    """The device this process computes on: ``"cpu"``, ``"ascend:0"`` or ``"gpu:0"``."""
    target, index = _current
    return "cpu" if target == "CPU" else f"{target.lower()}:{index}"


def on_ascend():
    """True when computing on an Ascend NPU (selects the fused kernels inside this backend)."""
    return _current[0] == "Ascend"


def __getattr__(attr):
    # train/io/distributed belong to the trainer / checkpoint code; imported on first use, as in the torch backend.
    if attr in ("train", "io", "distributed"):
        return importlib.import_module(f"{__name__}.{attr}")
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


set_device(os.environ.get("MMX_DEVICE") or "cpu")

from mmx.backends.mindspore import autograd, kernels, nn, ops, probe  # noqa: E402 - they read the device above
