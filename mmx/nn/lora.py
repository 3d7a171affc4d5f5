"""LoRA adapters of a :class:`mmx.nn.Linear`, written once against mmx.ops (PEFT's ``lora.Linear`` numerics).

A Linear of the mm layout can be several HF projections fused along its output rows (``linear_qkv`` = q, k, v
interleaved per KV group; ``linear_fc1`` = [gate; up]). PEFT puts one adapter on each HF projection, so mmx does the
same inside the fused Linear: one :class:`LoRAPiece` (``lora_A`` (r, in), ``lora_B`` (out_piece, r)) per HF piece,
keyed by the piece's HF leaf name (``q_proj``, ``gate_proj``, ``qkv``, ...), and ``rows`` that place the pieces'
outputs on the fused rows::

    y = x @ W.T + b + scaling * rows( cat([ (x @ A_p.T) @ B_p.T for p in pieces ] + [0]) )

``rows`` (out,) indexes the concatenated piece outputs in HF order (``cat`` of the targeted pieces, then one zero
column for rows of pieces without an adapter); it is the family name table's transform applied to row indices, so
each piece's ``A_p`` / ``B_p`` *are* PEFT's ``lora_A`` / ``lora_B`` of that HF module, and exports are exact. For a
plain (renamed) Linear with one targeted piece ``rows`` is None. ``scaling`` = alpha / rank, as PEFT's default.

State-dict names: ``<linear>.lora.<piece>.lora_A`` / ``.lora_B``; the base ``weight`` / ``bias`` keep their names.
"""
import numpy as np

from mmx import nn, ops


class LoRAPiece(nn.Module):
    """One adapter: x (..., in) → (dropout(x) @ lora_A.T) @ lora_B.T (..., out_rows). ``dropout`` (PEFT's
    lora_dropout, a mask of its own per piece as PEFT's per-module Dropout) applies only while ``dropout_active``
    (:func:`set_dropout`: the trainer turns it on; inference never does)."""

    def __init__(self, in_features, out_rows, rank, dropout=0.0):
        super().__init__()
        self.lora_A = nn.Parameter(ops.zeros((rank, in_features)))
        self.lora_B = nn.Parameter(ops.zeros((out_rows, rank)))
        self.dropout, self.dropout_active = float(dropout), False

    def forward(self, x):
        if self.dropout and self.dropout_active:
            x = ops.dropout(x, self.dropout)
        return ops.linear(ops.linear(x, ops.cast(self.lora_A, x.dtype)), ops.cast(self.lora_B, x.dtype))


def kaiming_uniform_a(rng, rank, in_features):
    """PEFT's ``lora_A`` init (``nn.init.kaiming_uniform_(a=sqrt(5))``): U(-1/sqrt(in), 1/sqrt(in)), float32."""
    bound = 1.0 / np.sqrt(in_features)
    return rng.uniform(-bound, bound, size=(rank, in_features)).astype(np.float32)


def add_lora(linear, pieces, rank, alpha, rows=None, rng=None, dropout=0.0):
    """Give ``linear`` adapters: ``pieces`` [(HF leaf name, output rows)] in HF order, ``rows`` (out,) int index
    (module docstring) or None. ``rng`` (numpy RandomState) draws ``lora_A`` as PEFT does; ``lora_B`` starts at 0.
    ``dropout``: PEFT's lora_dropout on each piece's input (off until :func:`set_dropout`)."""
    adapters = {}
    for key, out_rows in pieces:
        piece = LoRAPiece(linear.in_features, out_rows, rank, dropout)
        if rng is not None:
            nn.load_state_dict(piece, {"lora_A": kaiming_uniform_a(rng, rank, linear.in_features),
                                       "lora_B": np.zeros((out_rows, rank), np.float32)})
        adapters[key] = piece
    linear.lora = nn.ModuleDict(adapters)
    linear.lora_pieces = tuple(key for key, _ in pieces)
    linear.lora_scaling = float(alpha) / float(rank)
    linear.lora_rows = None if rows is None else np.asarray(rows, np.int64)
    return linear


def set_dropout(linear, active):
    """Turn the LoRA dropout of ``linear``'s adapters on (training) or off (evaluation, inference)."""
    for key in linear.lora_pieces:
        linear.lora[key].dropout_active = bool(active)


def lora_delta(linear, x):
    """scaling × the adapters' contribution to ``linear(x)``: x (..., in) → (..., out)."""
    outputs = [linear.lora[key](x) for key in linear.lora_pieces]
    if linear.lora_rows is None:
        return outputs[0] * linear.lora_scaling
    outputs.append(ops.zeros(tuple(x.shape[:-1]) + (1,), outputs[0].dtype))
    stacked = ops.cat(outputs, len(x.shape) - 1)
    placed = ops.index_select(stacked, len(x.shape) - 1, ops.tensor(linear.lora_rows))
    return placed * linear.lora_scaling


def merged_weight(weight, pieces, scaling, rows):
    """Numpy: ``weight`` (out, in) + scaling × the adapters as one matrix (``pieces`` [(lora_A, lora_B)] in HF
    order, ``rows`` as :func:`add_lora`'s, None for one piece): the merged Linear, as ``mm_to_hf --merge-lora``
    and PEFT's ``merge_and_unload`` compute it (in float32)."""
    deltas = [b.astype(np.float32) @ a.astype(np.float32) for a, b in pieces]
    if rows is None:
        delta = deltas[0]
    else:
        deltas.append(np.zeros((1, weight.shape[1]), np.float32))
        delta = np.concatenate(deltas, axis=0)[np.asarray(rows)]
    return (weight.astype(np.float32) + scaling * delta).astype(weight.dtype)
