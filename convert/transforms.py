"""Named HF ↔ mm tensor transforms used by the per-family name tables (``models/<family>/hf_names.py``).

Each transform is one class with both directions and their shape rules, so a table row names a transform once and
serves hf_to_mm and mm_to_hf alike. Every transform only reorders rows, so a round trip is byte-identical; tensors
travel as row blocks (``mmx/checkpoint/rows.py``: lists of views concatenated along dim 0), so no transform
copies data. Shapes are known before any data is read (the shape rules), which lets the converter write
safetensors headers first and stream tensors after.

``to_mm(list of HF tensors as row blocks) -> row blocks``; ``to_hf(row blocks) -> list of row blocks``.

=================  =====================================  ==============================================
name               HF tensors → mm tensor                 notes
=================  =====================================  ==============================================
``rename``         ``x`` → ``x``                          name change only
``fuse_qkv``       ``q, k, v`` → ``linear_qkv``           per-KV-group interleave (Megatron layout; see
                                                          docs/checkpoint-layout.md), weights and biases
``interleave_qkv`` ``qkv`` ([q; k; v]) → ``linear_qkv``   vision attention: ``fuse_qkv`` with Hkv = Hq
``fuse_gate_up``   ``gate, up`` → ``linear_fc1``          cat on dim 0 (first half gate, second half up)
``concat``         ``q, k, v`` → ``qkv`` ([q; k; v])      cat on dim 0 (InternVL's vision attention)
``stacked_experts`` ``experts (E, a, b)`` → ``(E, in, out)`` MoE: rename for hub files, a transpose of the last
                                                          two dims for transformers-saved ones (``layout``)
=================  =====================================  ==============================================

``per_expert_*``   ``experts.{e}.*_proj`` → ``(E, in, out)``  GLM-4.5V: E per-expert (out, in) linears
                                                          stacked and transposed (``_gate_up``, ``_down``)
``float32``        ``x`` → ``x`` in float32               a rename that ignores ``--dtype`` (router bias)

``stacked_experts`` with ``layout="transformers"`` and ``per_expert`` are the transforms that move bytes within rows:
they materialise one layer's stacked tensor (one tensor at a time, as the converter streams) and transpose it.
"""
import functools

import numpy as np

from mmx.checkpoint.rows import as_array, num_rows, take


class Rename:
    """One HF tensor ↔ one mm tensor, bytes untouched."""

    @staticmethod
    def to_mm(tensors):
        (blocks,) = tensors
        return blocks

    @staticmethod
    def to_hf(blocks):
        return [blocks]

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
        per_group = self.num_heads // self.num_kv_heads
        head_dim = self._head_dim(num_rows(q))
        fused, q_rows = [], per_group * head_dim
        for group in range(self.num_kv_heads):
            fused += take(q, group * q_rows, (group + 1) * q_rows)
            fused += take(k, group * head_dim, (group + 1) * head_dim)
            fused += take(v, group * head_dim, (group + 1) * head_dim)
        return fused

    def to_hf(self, blocks):
        per_group = self.num_heads // self.num_kv_heads
        head_dim = num_rows(blocks) // (self.num_heads + 2 * self.num_kv_heads)
        group_rows, q_rows = (per_group + 2) * head_dim, per_group * head_dim
        q, k, v = [], [], []
        for group in range(self.num_kv_heads):
            start = group * group_rows
            q += take(blocks, start, start + q_rows)
            k += take(blocks, start + q_rows, start + q_rows + head_dim)
            v += take(blocks, start + q_rows + head_dim, start + group_rows)
        return [q, k, v]

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
        third = num_rows(qkv) // 3
        return self._fuse.to_mm([take(qkv, index * third, (index + 1) * third) for index in range(3)])

    def to_hf(self, blocks):
        q, k, v = self._fuse.to_hf(blocks)
        return [q + k + v]

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
        return gate + up

    @staticmethod
    def to_hf(blocks):
        half = num_rows(blocks) // 2
        return [take(blocks, 0, half), take(blocks, half, 2 * half)]

    @staticmethod
    def mm_shape(shapes):
        gate, up = (tuple(s) for s in shapes)
        if gate != up:
            raise ValueError(f"gate {list(gate)} and up {list(up)} differ in shape")
        return (2 * gate[0],) + gate[1:]

    @staticmethod
    def hf_shapes(shape):
        return [(shape[0] // 2,) + tuple(shape[1:])] * 2


class Concat:
    """parts (R, ...) each ↔ one mm tensor (n R, ...) = cat(parts) on dim 0 (InternVL's vision q / k / v → the
    [q; k; v] ``linear_qkv``, the original layout's fused ``attn.qkv``)."""

    def __init__(self, parts=3):
        self.parts = parts

    def to_mm(self, tensors):
        return [block for blocks in tensors for block in blocks]

    def to_hf(self, blocks):
        rows = num_rows(blocks) // self.parts
        return [take(blocks, index * rows, (index + 1) * rows) for index in range(self.parts)]

    def mm_shape(self, shapes):
        shapes = [tuple(s) for s in shapes]
        if len(shapes) != self.parts or len(set(shapes)) != 1:
            raise ValueError(f"expected {self.parts} tensors of one shape to concatenate, got {shapes}")
        return (self.parts * shapes[0][0],) + shapes[0][1:]

    def hf_shapes(self, shape):
        return [(shape[0] // self.parts,) + tuple(shape[1:])] * self.parts


class StackedExperts:
    """One layer's stacked experts ↔ the mm (E, in, out) tensor: hub files hold that orientation (``layout="hub"``,
    a rename); transformers' ``save_pretrained`` writes (E, out, in) (``layout="transformers"``, transposed)."""

    def __init__(self, layout):
        if layout not in ("hub", "transformers"):
            raise ValueError(f"stacked_experts layout {layout!r}: expected 'hub' or 'transformers'")
        self.transposed = layout == "transformers"

    def _swap(self, blocks):
        return [np.ascontiguousarray(np.swapaxes(as_array(blocks), 1, 2))] if self.transposed else blocks

    def to_mm(self, tensors):
        (blocks,) = tensors
        return self._swap(blocks)

    def to_hf(self, blocks):
        return [self._swap(blocks)]

    def mm_shape(self, shapes):
        (shape,) = shapes
        if len(shape) != 3:
            raise ValueError(f"stacked experts must be 3-D (experts, in, out), got shape {list(shape)}")
        return (shape[0], shape[2], shape[1]) if self.transposed else tuple(shape)

    def hf_shapes(self, shape):
        return [(shape[0], shape[2], shape[1]) if self.transposed else tuple(shape)]


class PerExpert:
    """Per-expert HF linears (GLM-4.5V's ``experts.{e}.{gate,up,down}_proj.weight``, (out, in) each) ↔ one stacked
    mm tensor (E, in, out): ``projection="gate_up"`` takes the E gates then the E ups ((F, C) each) into
    ``linear_fc1`` (E, C, 2F) = [gate^T | up^T]; ``"down"`` the E downs ((C, F)) into ``linear_fc2`` (E, F, C).
    A transpose per expert: it materialises one layer's stacked tensor, and the way back splits it into the same
    bytes."""

    def __init__(self, projection):
        if projection not in ("gate_up", "down"):
            raise ValueError(f"per_expert projection {projection!r}: expected 'gate_up' or 'down'")
        self.parts = 2 if projection == "gate_up" else 1

    def to_mm(self, tensors):
        experts = len(tensors) // self.parts
        first = as_array(tensors[0])
        out = np.empty((experts, first.shape[1], self.parts * first.shape[0]), first.dtype)
        width = first.shape[0]
        for index, blocks in enumerate(tensors):
            part, expert = divmod(index, experts)
            out[expert, :, part * width:(part + 1) * width] = as_array(blocks).T
        return [out]

    def to_hf(self, blocks):
        stacked = as_array(blocks)
        width = stacked.shape[2] // self.parts
        return [[np.ascontiguousarray(stacked[expert, :, part * width:(part + 1) * width].T)]
                for part in range(self.parts) for expert in range(stacked.shape[0])]

    def mm_shape(self, shapes):
        shapes = [tuple(s) for s in shapes]
        if len(set(shapes)) != 1 or len(shapes[0]) != 2 or len(shapes) % self.parts:
            raise ValueError(f"per-expert linears must be 2-D and all of one shape, got {sorted(set(shapes))}")
        out_features, in_features = shapes[0]
        return (len(shapes) // self.parts, in_features, self.parts * out_features)

    def hf_shapes(self, shape):
        experts, in_features, out_features = shape
        return [(out_features // self.parts, in_features)] * (self.parts * experts)


class Float32(Rename):
    """A rename whose mm tensor is float32 whatever ``--dtype`` says (GLM-4.5V's ``e_score_correction_bias``,
    transformers' ``_keep_in_fp32_modules_strict``): hf_to_mm casts it up if it came narrower."""

    dtype = "F32"


TRANSFORMS = {"rename": Rename, "fuse_qkv": FuseQKV, "interleave_qkv": InterleaveQKV, "fuse_gate_up": FuseGateUp,
              "stacked_experts": StackedExperts, "per_expert_gate_up": functools.partial(PerExpert, "gate_up"),
              "per_expert_down": functools.partial(PerExpert, "down"), "float32": Float32}

TRANSFORMS["concat"] = Concat


def make(name, **arguments):
    """The transform ``name`` (a key of TRANSFORMS) built with its arguments (head counts, expert layout)."""
    try:
        cls = TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}") from None
    return cls(**arguments) if arguments else cls()
