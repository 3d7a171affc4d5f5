"""Tensors as row blocks: a list of arrays that, concatenated along dim 0, form one tensor — without copying.

Conversion only reorders rows (fused qkv, gate/up, tensor-parallel chunks of dim 0), so it can pass lists of views
from reader to writer and never materialise the fused tensor: the writer writes the blocks back to back. This
keeps conversion at one read and one write per byte, like a plain copy, and peak memory at one tensor group.

:class:`Arena` is a reusable byte buffer the streaming readers read into, so a conversion touches the same memory
for every tensor group instead of asking the OS for fresh pages each time.
"""
import numpy as np


def num_rows(blocks):
    return sum(block.shape[0] for block in blocks)


def take(blocks, start, stop):
    """Rows ``start:stop`` of the tensor ``blocks`` stand for, as a list of views."""
    picked, offset = [], 0
    for block in blocks:
        rows = block.shape[0]
        low, high = max(start - offset, 0), min(stop - offset, rows)
        if low < high:
            picked.append(block[low:high])
        offset += rows
    return picked


def chunks(blocks, count):
    """``count`` equal row chunks (each a list of views); the caller checked divisibility."""
    size = num_rows(blocks) // count
    return [take(blocks, index * size, (index + 1) * size) for index in range(count)]


def as_array(blocks):
    """The whole tensor as one array (no copy when there is a single block)."""
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate(blocks, axis=0)


class Arena:
    """A growing byte buffer handed out front to back; ``reset()`` recycles it for the next tensor group.

    Arrays carved from it stay valid until the next ``reset()`` (growing allocates a new buffer; arrays handed out
    earlier keep the old one alive).
    """

    def __init__(self):
        self._buffer = np.empty(0, np.uint8)
        self._used = 0

    def reset(self):
        self._used = 0

    def take(self, nbytes):
        """A uint8 view of ``nbytes`` unused bytes (8-byte aligned)."""
        start = -(-self._used // 8) * 8
        if start + nbytes > self._buffer.size:
            self._buffer = np.empty(max(nbytes, 2 * self._buffer.size), np.uint8)
            start = 0
        self._used = start + nbytes
        return self._buffer[start:start + nbytes]
