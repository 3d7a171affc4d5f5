"""Tensor-parallel split and merge of whole mm tensors, by the split rules a model's plan declares.

Rules (``plan.TENSOR_PARALLEL``: mm name with ``{i}``/``{j}`` placeholders → rule):
``replicate`` every rank holds the whole tensor (merge takes rank 0's copy);
``column`` / ``vocab`` / ``qkv``: equal chunks of dim 0 (``qkv`` is the per-KV-group interleaved linear_qkv, so
chunks are whole KV groups); ``row``: equal chunks of dim 1; ``gate_up``: the gate and up halves are each chunked
on dim 0 and rank r holds ``cat(gate_r, up_r)``; ``qkv_blocks``: the same over thirds, for a fused qkv kept in
HF's [q; k; v] row order (GLM-4.1V's vision ``qkv``): rank r holds ``cat(q_r, k_r, v_r)``, whole heads each.
Splits and merges only slice and concatenate: byte-exact.
Tensors travel as row blocks (rows.py), so dim-0 rules never copy; ``row`` merges concatenate along dim 1.
"""
import re
from functools import lru_cache

import numpy as np

from mmx.checkpoint.rows import as_array, chunks, num_rows, take

RULES = ("replicate", "column", "vocab", "qkv", "row", "gate_up", "qkv_blocks")
# Rules that split each of several equal row blocks on its own: the number of blocks.
_BLOCKS = {"gate_up": 2, "qkv_blocks": 3}


@lru_cache(maxsize=None)
def _compiled(plan):
    patterns = []
    for pattern, rule in plan.TENSOR_PARALLEL.items():
        if rule not in RULES:
            raise ValueError(f"{plan.__name__}: rule {rule!r} for {pattern!r} is not one of {', '.join(RULES)}")
        regex = re.escape(pattern).replace(r"\{i\}", r"\d+").replace(r"\{j\}", r"\d+")
        patterns.append((re.compile(regex + "$"), rule))
    return patterns


@lru_cache(maxsize=None)
def _expert_patterns(plan):
    patterns = []
    for pattern, dim in getattr(plan, "EXPERT_PARALLEL", {}).items():
        if dim != 0:
            raise ValueError(f"{plan.__name__}: EXPERT_PARALLEL splits {pattern!r} on dim {dim}; only dim 0 (the "
                             f"expert index of a stacked tensor) is supported")
        regex = re.escape(pattern).replace(r"\{i\}", r"\d+").replace(r"\{j\}", r"\d+")
        patterns.append(re.compile(regex + "$"))
    return patterns


def is_expert(name, plan):
    """Whether expert parallelism splits mm tensor ``name`` (a stacked-expert tensor of ``plan.EXPERT_PARALLEL``,
    split on dim 0: rank e holds experts e*E/ep .. (e+1)*E/ep - 1, renumbered from 0)."""
    return any(regex.match(name) for regex in _expert_patterns(plan))


def tp_rule(name, plan):
    """The split rule of mm tensor ``name`` in ``plan`` (a model's plan module)."""
    for regex, rule in _compiled(plan):
        if regex.match(name):
            return rule
    raise KeyError(f"tensor {name!r} has no tensor-parallel rule in {plan.__name__}.TENSOR_PARALLEL; add one")


def _split_dim(rule):
    return 1 if rule == "row" else 0


def piece_shape(shape, rule, tp_size, name="tensor"):
    """Shape of one rank's piece; a clear error when ``tp_size`` does not divide the split dimension."""
    shape = tuple(shape)
    if rule == "replicate" or tp_size == 1:
        return shape
    dim = _split_dim(rule)
    parts = _BLOCKS.get(rule, 1) * tp_size
    if len(shape) <= dim or shape[dim] % parts:
        size = shape[dim] if len(shape) > dim else None
        raise ValueError(f"tp_size {tp_size} cannot split {name} (shape {list(shape)}, rule {rule!r}): dimension "
                         f"{dim} of size {size} is not divisible by {parts}; choose a tp_size that divides it")
    return shape[:dim] + (shape[dim] // tp_size,) + shape[dim + 1:]


def full_shape(shape, rule, tp_size):
    """Inverse of piece_shape."""
    if rule == "replicate" or tp_size == 1:
        return tuple(shape)
    dim = _split_dim(rule)
    return tuple(shape[:dim]) + (shape[dim] * tp_size,) + tuple(shape[dim + 1:])


def split(blocks, rule, tp_size):
    """Whole tensor as row blocks (rows.py) → tp_size pieces, each as row blocks of views (no copies)."""
    if rule == "replicate" or tp_size == 1:
        return [blocks] * tp_size
    if rule == "row":
        width = blocks[0].shape[1] // tp_size
        return [[block[:, rank * width:(rank + 1) * width] for block in blocks] for rank in range(tp_size)]
    if rule in _BLOCKS:
        count = _BLOCKS[rule]
        size = num_rows(blocks) // count
        parts = [chunks(take(blocks, b * size, (b + 1) * size), tp_size) for b in range(count)]
        return [[block for part in rank_parts for block in part] for rank_parts in zip(*parts)]
    return chunks(blocks, tp_size)


def merge(pieces, rule, arena=None):
    """tp pieces (rank order, each as row blocks) → the whole tensor as row blocks; a ``row`` merge (the only
    copying one) lands in ``arena`` (rows.Arena) when given."""
    if rule == "replicate" or len(pieces) == 1:
        return pieces[0]
    if rule == "row":
        arrays = [as_array(piece) for piece in pieces]
        shape = arrays[0].shape[:1] + (sum(a.shape[1] for a in arrays),) + arrays[0].shape[2:]
        out = None
        if arena is not None:
            out = arena.take(sum(a.nbytes for a in arrays)).view(arrays[0].dtype).reshape(shape)
        return [np.concatenate(arrays, axis=1, out=out)]
    if rule in _BLOCKS:
        count = _BLOCKS[rule]
        sizes = [num_rows(piece) // count for piece in pieces]
        return [block for b in range(count) for piece, size in zip(pieces, sizes)
                for block in take(piece, b * size, (b + 1) * size)]
    return [block for piece in pieces for block in piece]
