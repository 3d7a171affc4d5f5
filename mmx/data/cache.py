"""Preprocessed samples on disk, one entry per (dataset file, preprocessing) pair.

Key: sha256 of the dataset file's bytes + the :meth:`Preprocessor.fingerprint` (processor files, chat template,
preprocessing keys, format version). Media files are not hashed (that would read every image on every start): after
editing images in place, set ``overwrite_cache: true`` once.

An entry is a folder ``<cache_dir>/<key>/`` of ``.npy`` arrays (concatenated per field, with offsets) and
``meta.json``; it is built in a temporary folder next to it and renamed into place, so a reader sees a whole entry or
none. Several processes sharing ``cache_dir`` take an exclusive ``fcntl`` lock per key: the first builds, the others
wait and then read. Arrays are loaded with ``mmap_mode="r"`` and never with pickle.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

FIELDS = ("input_ids", "labels", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
          "second_per_grid_ts")


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(dataset_file, fingerprint):
    return hashlib.sha256(f"{file_digest(dataset_file)}:{fingerprint}".encode()).hexdigest()[:32]


@contextlib.contextmanager
def locked(cache_dir, key):
    """Exclusive lock on ``key`` across processes (released on exit, also if the holder dies)."""
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, f"{key}.lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry_path(cache_dir, key):
    return os.path.join(cache_dir, key)


def write_entry(cache_dir, key, samples, meta):
    """Store encoded samples (dicts of arrays, :class:`Preprocessor` layout) and ``meta`` (JSON) atomically."""
    final = entry_path(cache_dir, key)
    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir)
    try:
        for name in FIELDS:
            parts = [s[name] for s in samples if name in s]
            offsets = np.zeros(len(samples) + 1, np.int64)
            offsets[1:] = np.cumsum([len(s[name]) if name in s else 0 for s in samples])
            np.save(os.path.join(tmp, f"{name}.offsets.npy"), offsets)
            if parts:
                np.save(os.path.join(tmp, f"{name}.npy"), np.concatenate(parts))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(meta, ids=[s["id"] for s in samples]), f)
        if os.path.isdir(final):        # overwrite_cache: replace the old entry
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class CachedSamples:
    """A cache entry read back lazily: ``len()``, ``[i]`` → the encoded sample dict, ``.meta``."""

    def __init__(self, cache_dir, key):
        path = entry_path(cache_dir, key)
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        self.ids = self.meta["ids"]
        self.offsets, self.arrays = {}, {}
        for name in FIELDS:
            self.offsets[name] = np.load(os.path.join(path, f"{name}.offsets.npy"))
            data = os.path.join(path, f"{name}.npy")
            if os.path.isfile(data):
                self.arrays[name] = np.load(data, mmap_mode="r", allow_pickle=False)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        sample = {"id": self.ids[index]}
        for name, data in self.arrays.items():
            start, end = self.offsets[name][index], self.offsets[name][index + 1]
            if end > start:
                sample[name] = np.array(data[start:end])
        return sample


def load_entry(cache_dir, key):
    """The cached samples of ``key`` or None."""
    return CachedSamples(cache_dir, key) if os.path.isfile(os.path.join(entry_path(cache_dir, key),
                                                                         "meta.json")) else None
