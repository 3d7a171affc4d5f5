"""Kernels chosen by name (ARCHITECTURE rule 4): the registry both backends fill, and the validated attention call.

Each backend's ``kernels`` package holds two :class:`KernelTable`\\ s (attention, MoE) and registers its
implementations with :func:`register`. A kernel has an availability predicate (is its library importable, is the
device one it runs on) and a ``supports`` check for the call at hand (dtype, options) that returns the reason it
cannot run that call, or None. ``impl="auto"`` takes the first kernel of the table's order that is available and
supports the call; a kernel asked for by name that cannot run raises an error listing those that can.
"""
from dataclasses import dataclass

import numpy as np

from mmx import ops


@dataclass
class Kernel:
    """A named implementation: ``fn`` computes, ``available()`` says whether it can run here at all, and
    ``supports(*inputs)`` returns why it cannot run this particular call (or None when it can)."""

    name: str
    fn: object
    available: object
    supports: object


class KernelTable(dict):
    """Name → :class:`Kernel` for one kind of op (``"attention"``, ``"moe"``), with the order ``auto`` tries."""

    def __init__(self, kind, auto_order):
        super().__init__()
        self.kind, self.auto_order = kind, tuple(auto_order)

    def available(self):
        """Names of the kernels usable on this machine and device, in registration order."""
        return [name for name, kernel in self.items() if kernel.available()]

    def pick(self, impl, inputs):
        """The function of kernel ``impl`` (a name or ``"auto"``) that can run a call on ``inputs``."""
        if impl != "auto":
            if impl not in self:
                raise ValueError(f"unknown {self.kind} kernel {impl!r}; registered: {', '.join(self)}")
            kernel = self[impl]
            reason = "not available on this machine/device" if not kernel.available() else kernel.supports(*inputs)
            if reason:
                usable = [k.name for k in self.values() if k.available() and not k.supports(*inputs)]
                raise ValueError(f"{self.kind} kernel {impl!r} cannot run this call: {reason}. Usable here: "
                                 f"{', '.join(usable)} (or impl='auto')")
            return kernel.fn
        for name in self.auto_order:
            kernel = self.get(name)
            if kernel is not None and kernel.available() and not kernel.supports(*inputs):
                return kernel.fn
        raise ValueError(f"no {self.kind} kernel can run this call")  # the references support everything


def register(table, name, available, supports=None):
    """Decorator adding ``fn`` to ``table`` under ``name``."""
    def add(fn):
        table[name] = Kernel(name, fn, available, supports or (lambda *inputs: None))
        return fn
    return add


@dataclass
class AttentionCall:
    """One attention call, validated; kernels take it whole. Dense: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D).
    Varlen: q/k/v (T, H, D) with ``cu_seqlens`` (N+1,) int32 and ``seqlens`` its N lengths as Python ints;
    ``cu_seqlens`` is what the caller gave: a backend tensor, or a numpy array (host metadata, as the models pass
    it: its bounds need no device -> host read; a kernel that wants a device tensor converts it)."""

    q: object
    k: object
    v: object
    causal: bool
    cu_seqlens: object
    seqlens: object
    window: object
    key_padding_mask: object
    scale: float

    @property
    def varlen(self):
        return self.cu_seqlens is not None

    @classmethod
    def check(cls, q, k, v, causal, cu_seqlens, window, key_padding_mask, scale):
        """Validate shapes and options against the contract; errors say what is wrong and how to fix it."""
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        rank = 3 if cu_seqlens is not None else 4
        layout = "(T, H, D) with cu_seqlens" if rank == 3 else "(B, S, H, D)"
        for label, t in (("q", q), ("k", k), ("v", v)):
            if t.ndim != rank:
                raise ValueError(f"attention: {label} must be {layout}, got shape {tuple(t.shape)}")
        if k.shape != v.shape:
            raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
        if q.shape[-1] != k.shape[-1] or q.shape[:-3] != k.shape[:-3]:
            raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree in batch or head dim")
        if q.shape[-2] % k.shape[-2]:
            raise ValueError(f"attention: {q.shape[-2]} query heads is not a multiple of {k.shape[-2]} KV heads")
        if window is not None and (not causal or window < 1):
            raise ValueError(f"attention: window={window} needs causal=True and window >= 1 (a sliding window "
                             f"counts keys back from each query)")
        seqlens = None
        if cu_seqlens is not None:
            if key_padding_mask is not None:
                raise ValueError("attention: key_padding_mask is for dense (B, S, H, D) inputs; a varlen batch "
                                 "has no padding (leave padded tokens out of cu_seqlens)")
            # Integer metadata read on the host, as HF does with cu_seqlens: numpy as given (no sync), a tensor read.
            host = cu_seqlens if isinstance(cu_seqlens, (np.ndarray, list, tuple)) else ops.to_numpy(cu_seqlens)
            bounds = [int(b) for b in np.asarray(host).tolist()]
            if bounds[0] != 0 or bounds[-1] != q.shape[0] or k.shape[0] != q.shape[0] or any(
                    after < before for before, after in zip(bounds, bounds[1:])):
                raise ValueError(f"attention: cu_seqlens {bounds} must rise from 0 to the {q.shape[0]} packed "
                                 f"tokens of q and k")
            seqlens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        elif key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[1]):
            raise ValueError(f"attention: key_padding_mask must be (B, Sk) = {(k.shape[0], k.shape[1])}, "
                             f"got {tuple(key_padding_mask.shape)}")
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return cls(q, k, v, bool(causal), cu_seqlens, seqlens, window, key_padding_mask, scale)
