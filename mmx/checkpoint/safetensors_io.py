"""Safetensors files read and written tensor by tensor, with numpy only (bf16 / fp8 through ml_dtypes).

The ``safetensors`` package loads or saves a whole file at once; conversion must stream (peak memory near the
largest tensor group, not the model), so this module parses the header itself and moves one tensor at a time:

* :class:`SafetensorsFile` reads the header only when opened; :meth:`SafetensorsFile.read` reads one tensor's bytes
  straight into a fresh array (no memory map: mapped pages would count towards the process RSS).
* :class:`SafetensorsWriter` takes every tensor's name, dtype and shape up front, writes the header, then accepts the
  tensors in any order (each lands at its precomputed offset). Files it writes load with ``safetensors.safe_open``.

Format: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}, "__metadata__":
{str: str}}`` (padded with spaces so the data starts 8-byte aligned), then the tensors' bytes back to back.
"""
import json
import os
import struct

import ml_dtypes
import numpy as np

from mmx.checkpoint.rows import Arena

DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8), "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16), "I32": np.dtype(np.int32), "U32": np.dtype(np.uint32), "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read: the message names the file, the tensor and what is wrong."""


def dtype_name(dtype):
    """numpy dtype → safetensors dtype string ("BF16", "F32", ...)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":   # ml_dtypes' or MindSpore's own numpy bfloat16 type: the same bits
        return "BF16"
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise SafetensorsError(f"dtype {np.dtype(dtype)} has no safetensors equivalent") from None


def nbytes(dtype_str, shape):
    return DTYPES[dtype_str].itemsize * int(np.prod(shape, dtype=np.int64))


class SafetensorsFile:
    """One safetensors file; the header is parsed on open, tensors are read only when asked for.

    ``entries``: {name: (dtype string, shape tuple)} in file order; ``metadata``: the header's ``__metadata__``.
    """

    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: not a safetensors file (only {len(head)} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{self.path}: not a safetensors file (header length {header_len})")
            raw = handle.read(header_len)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SafetensorsError(f"{self.path}: unreadable safetensors header ({err})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        self._offsets = {}
        self.entries = {}
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has dtype {info['dtype']}, which mmx cannot "
                                       f"read (supported: {', '.join(DTYPES)})")
            self.entries[name] = (info["dtype"], tuple(info["shape"]))
            self._offsets[name] = tuple(info["data_offsets"])

    def offset(self, name):
        """Byte offset of ``name``'s data inside the file (to read tensors in file order)."""
        return self.data_start + self._offsets[name][0]

    def read(self, name, arena=None):
        """The tensor ``name`` as a numpy array (bf16 as ml_dtypes.bfloat16): a new array, or one carved from
        ``arena`` (rows.Arena; valid until the arena's next reset)."""
        dtype_str, shape = self.entries[name]
        begin, end = self._offsets[name]
        raw = np.empty(end - begin, np.uint8) if arena is None else arena.take(end - begin)
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + begin)
            got = handle.readinto(raw)
        if got != end - begin:
            raise SafetensorsError(f"{self.path} is truncated: tensor {name!r} needs bytes {self.data_start + begin}"
                                   f"..{self.data_start + end} but the file has {os.path.getsize(self.path)}; "
                                   f"copy or download the file again")
        return raw.view(DTYPES[dtype_str]).reshape(shape)

    def read_rows(self, name, begin, end, arena=None):
        """Rows ``begin:end`` (dim 0) of tensor ``name``: only their bytes are read (a row-major tensor's rows are
        contiguous; what ``safe_open(...).get_slice(name)[begin:end]`` reads, without a memory map). A 0-d tensor
        is read whole."""
        dtype_str, shape = self.entries[name]
        if not shape:
            return self.read(name, arena)
        if not 0 <= begin <= end <= shape[0]:
            raise SafetensorsError(f"{self.path}: rows {begin}:{end} of {name!r} are outside its {shape[0]} rows")
        row = DTYPES[dtype_str].itemsize * int(np.prod(shape[1:], dtype=np.int64))
        first = self._offsets[name][0] + begin * row
        size = (end - begin) * row
        raw = np.empty(size, np.uint8) if arena is None else arena.take(size)
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + first)
            got = handle.readinto(raw)
        if got != size:
            raise SafetensorsError(f"{self.path} is truncated: rows {begin}:{end} of {name!r} need bytes "
                                   f"{self.data_start + first}..{self.data_start + first + size} but the file has "
                                   f"{os.path.getsize(self.path)}; copy or download the file again")
        return raw.view(DTYPES[dtype_str]).reshape((end - begin,) + tuple(shape[1:]))


class SafetensorsWriter:
    """Write a safetensors file whose tensors (name, dtype string, shape) are known before their data.

    ``write(name, array)`` may come in any order (declared order is fastest: every write is then an append);
    ``close()`` checks every tensor arrived, flushes and fsyncs.
    """

    def __init__(self, path, entries, metadata=None):
        self.path = str(path)
        header, self._slots, offset = {}, {}, 0
        for name, dtype_str, shape in entries:
            size = nbytes(dtype_str, shape)
            header[name] = {"dtype": dtype_str, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._slots[name] = (dtype_str, tuple(shape), offset)
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(len(raw) + 8) % 8)
        self._data_start = 8 + len(raw)
        self._pending = set(self._slots)
        self._scratch = Arena()
        self._handle = open(self.path, "wb")
        # No truncate to the final size: writing into a sparse (pre-truncated) file measured several times slower
        # than appending here (ext4, 2026-11-22). Callers write tensors in declared order, so writes are appends.
        self._handle.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name, tensor):
        """Write ``tensor``: an array, or row blocks (a list of arrays that stacked on dim 0 form the tensor)."""
        dtype_str, shape, offset = self._slots[name]
        blocks = tensor if isinstance(tensor, list) else [tensor]
        got = (sum(block.shape[0] for block in blocks),) + tuple(blocks[0].shape[1:]) if blocks[0].ndim else ()
        if any(dtype_name(block.dtype) != dtype_str for block in blocks) or got != shape:
            raise SafetensorsError(f"{self.path}: tensor {name!r} was declared {dtype_str}{list(shape)} but got "
                                   f"{dtype_name(blocks[0].dtype)}{list(got)}")
        self._handle.seek(self._data_start + offset)
        for block in blocks:
            if not block.flags.c_contiguous:   # a column slice (row-parallel split): copy via reusable scratch
                self._scratch.reset()
                scratch = self._scratch.take(block.nbytes).view(block.dtype).reshape(block.shape)
                np.copyto(scratch, block)
                block = scratch
            self._handle.write(block.reshape(-1).view(np.uint8).data)
        self._pending.discard(name)

    def abort(self):
        """Close without checks (the caller removes the partial file)."""
        if not self._handle.closed:
            self._handle.close()

    def close(self):
        if self._pending:
            missing = sorted(self._pending)
            self._handle.close()
            raise SafetensorsError(f"{self.path}: {len(missing)} declared tensors were never written "
                                   f"(first: {missing[:3]})")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()


def save_file(tensors, path, metadata=None):
    """Write {name: numpy array} to ``path`` (names sorted) — the in-memory convenience over the writer."""
    names = sorted(tensors)
    writer = SafetensorsWriter(path, [(n, dtype_name(tensors[n].dtype), tensors[n].shape) for n in names], metadata)
    for name in names:
        writer.write(name, tensors[name])
    writer.close()


def load_file(path):
    """{name: numpy array} of every tensor in ``path``."""
    file = SafetensorsFile(path)
    return {name: file.read(name) for name in file.entries}
