"""Named HF ↔ mm tensor transforms used by the per-family name tables (``models/<family>/hf_names.py``).

Each transform is one class with both directions and their shape rules, so a table row names a transform once and
serves hf_to_mm and mm_to_hf alike. Every transform only reshapes, splits and concatenates, so a round trip is
byte-identical. Shapes are known before any data is read (the shape rules), which lets the converter write
safetensors headers first and stream tensors after.

=================  =====================================  ==============================================
name               HF tensors → mm tensor                 notes
=================  =====================================  ==============================================
``rename``         ``x`` → ``x``                          name change only
``fuse_qkv``       ``q, k, v`` → ``linear_qkv``           per-KV-group interleave (Megatron layout; see
                                                          docs/checkpoint-layout.md), weights and biases
``interleave_qkv`` ``qkv`` ([q; k; v]) → ``linear_qkv``   vision attention: ``fuse_qkv`` with Hkv = Hq
``fuse_gate_up``   ``gate, up`` → ``linear_fc1``          cat on dim 0 (first half gate, second half up)
=================  =====================================  ==============================================
"""
import numpy as np


class Rename:
    """One HF tensor ↔ one mm tensor, bytes untouched."""

    @staticmethod
    def to_mm(tensors):
        (tensor,) = tensors
        return tensor

    @staticmethod
    def to_hf(tensor):
        return [tensor]

    @staticmethod
    def mm_shape(shapes):
        (shape,) = shapes
        return tuple(shape)

    @staticmethod
    def hf_shapes(shape):
        return [tuple(shape)]


class FuseQKV:
    """q (Hq*D, ...), k (Hkv*D, ...), v (Hkv*D, ...) ↔ linear_qkv ((Hq + 2 Hkv) D, ...) grouped per KV head.

    mm row order: for each KV group g: q heads g*r .. g*r+r-1, k head g, v head g (r = Hq / Hkv).
    """

    def __init__(self, num_heads, num_kv_heads):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads

    def _head_dim(self, q_rows):
        if q_rows % self.num_heads:
            raise ValueError(f"q has {q_rows} rows, not a multiple of num_heads {self.num_heads}")
        return q_rows // self.num_heads

    def to_mm(self, tensors):
        q, k, v = tensors
        groups, per_group = self.num_kv_heads, self.num_heads // self.num_kv_heads
        head_dim, tail = self._head_dim(q.shape[0]), q.shape[1:]
        fused = np.concatenate([q.reshape((groups, per_group * head_dim) + tail),
                                k.reshape((groups, head_dim) + tail),
                                v.reshape((groups, head_dim) + tail)], axis=1)
        return fused.reshape(((self.num_heads + 2 * groups) * head_dim,) + tail)

    def to_hf(self, tensor):
        groups, per_group = self.num_kv_heads, self.num_heads // self.num_kv_heads
        head_dim, tail = tensor.shape[0] // (self.num_heads + 2 * groups), tensor.shape[1:]
        grouped = tensor.reshape((groups, (per_group + 2) * head_dim) + tail)
        q, k, v = np.split(grouped, [per_group * head_dim, (per_group + 1) * head_dim], axis=1)
        return [np.ascontiguousarray(part).reshape((-1,) + tail) for part in (q, k, v)]

    def mm_shape(self, shapes):
        q, k, v = (tuple(s) for s in shapes)
        head_dim = self._head_dim(q[0])
        expected = (self.num_kv_heads * head_dim,) + q[1:]
        if k != expected or v != expected:
            raise ValueError(f"k {list(k)} / v {list(v)} do not match q {list(q)} with {self.num_heads} heads and "
                             f"{self.num_kv_heads} KV heads (expected {list(expected)})")
        return (q[0] + k[0] + v[0],) + q[1:]

    def hf_shapes(self, shape):
        head_dim = shape[0] // (self.num_heads + 2 * self.num_kv_heads)
        tail = tuple(shape[1:])
        return [(self.num_heads * head_dim,) + tail] + [(self.num_kv_heads * head_dim,) + tail] * 2


class InterleaveQKV:
    """Vision qkv ([q; k; v] stacked, (3 H D, ...)) ↔ linear_qkv interleaved per head ([q_h; k_h; v_h] for each h)."""

    def __init__(self, num_heads):
        self._fuse = FuseQKV(num_heads, num_heads)

    def to_mm(self, tensors):
        (qkv,) = tensors
        return self._fuse.to_mm(np.split(qkv, 3, axis=0))

    def to_hf(self, tensor):
        return [np.concatenate(self._fuse.to_hf(tensor), axis=0)]

    def mm_shape(self, shapes):
        (shape,) = shapes
        if shape[0] % 3:
            raise ValueError(f"qkv has {shape[0]} rows, not a multiple of 3")
        return tuple(shape)

    def hf_shapes(self, shape):
        return [tuple(shape)]


class FuseGateUp:
    """gate (I, ...), up (I, ...) ↔ linear_fc1 (2I, ...) = cat(gate, up)."""

    @staticmethod
    def to_mm(tensors):
        gate, up = tensors
        return np.concatenate([gate, up], axis=0)

    @staticmethod
    def to_hf(tensor):
        return [np.ascontiguousarray(half) for half in np.split(tensor, 2, axis=0)]

    @staticmethod
    def mm_shape(shapes):
        gate, up = (tuple(s) for s in shapes)
        if gate != up:
            raise ValueError(f"gate {list(gate)} and up {list(up)} differ in shape")
        return (2 * gate[0],) + gate[1:]

    @staticmethod
    def hf_shapes(shape):
        return [(shape[0] // 2,) + tuple(shape[1:])] * 2


TRANSFORMS = {"rename": Rename, "fuse_qkv": FuseQKV, "interleave_qkv": InterleaveQKV, "fuse_gate_up": FuseGateUp}


def make(name, **arguments):
    """The transform ``name`` (a key of TRANSFORMS) built with its numeric arguments (head counts)."""
    try:
        cls = TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}") from None
    return cls(**arguments) if arguments else cls()
