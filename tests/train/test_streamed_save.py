"""Checkpoint saves stream (issue 18): tensors reach the writer one at a time and each is dropped before the next
is gathered, the files are byte for byte what the whole-dict writer wrote, and a tensor found unusable while
streaming leaves no checkpoint."""
import gc
import os
import weakref

import ml_dtypes
import numpy as np
import pytest

from mmx.train import checkpoint
from train_runner import train

TENSORS = {"b": np.random.default_rng(0).random((3, 5), np.float32), "a": np.ones(7, ml_dtypes.bfloat16),
           "c": np.arange(3, dtype=np.int64), "z": np.zeros((0, 2), np.float32), "s": np.array(3.0, np.float32),
           "h": np.float16([1, 2, 3]), "u": np.array([True, False])}


def _stream(tensors, alive, kind=None):
    """(name, fresh copy) pairs (with ``kind``: (kind, name, copy)); before making the next, counts in ``alive`` how
    many earlier copies are still alive."""
    refs = []
    for name, value in tensors.items():
        gc.collect()
        alive.append(sum(ref() is not None for ref in refs))
        copy = value.copy()
        refs.append(weakref.ref(copy))
        yield (name, copy) if kind is None else (kind, name, copy)
        del copy


def _moments(moments, alive):
    for kind in ("exp_avg", "exp_avg_sq"):
        yield from _stream(moments[kind], alive, kind)


def test_stream_writer_is_byte_identical_to_the_dict_writer(tmp_path):
    checkpoint._write_safetensors(str(tmp_path / "dict.safetensors"), TENSORS, {"format": "pt"})
    stream = checkpoint.SafetensorsStream(str(tmp_path), "stream.safetensors")
    for name, value in TENSORS.items():
        stream.add(name, value)
    checkpoint._write_safetensors(str(tmp_path / "stream.safetensors"), stream, {"format": "pt"})
    assert (tmp_path / "stream.safetensors").read_bytes() == (tmp_path / "dict.safetensors").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["dict.safetensors", "stream.safetensors"]   # the spool is gone


def test_save_checkpoint_holds_one_streamed_tensor_at_a_time(tmp_path):
    moments = {"exp_avg": {"b": TENSORS["b"] * 2, "a": TENSORS["b"][0]}, "exp_avg_sq": {"b": TENSORS["b"] ** 2}}
    whole = checkpoint.save_checkpoint(str(tmp_path / "dict"), 3, TENSORS, {"backend": "torch"}, {"iteration": 3},
                                       dict(moments, step=3))
    alive = []
    streamed = checkpoint.save_checkpoint(str(tmp_path / "stream"), 3, _stream(TENSORS, alive), {"backend": "torch"},
                                          {"iteration": 3}, (3, _moments(moments, alive)))
    assert alive == [0] * (len(TENSORS) + 3)   # no earlier tensor alive when the next one is made
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert open(os.path.join(streamed, "mp_rank_00", name), "rb").read() == \
            open(os.path.join(whole, "mp_rank_00", name), "rb").read()


def test_unusable_tensor_while_streaming_leaves_no_checkpoint(tmp_path):
    save = str(tmp_path / "save")
    bad = dict(TENSORS, b=np.float32([[1.0, np.inf]]))
    with pytest.raises(ValueError, match=r"b: 1 non-finite values"):
        checkpoint.save_checkpoint(save, 1, iter(bad.items()), {"backend": "torch"}, {"iteration": 1})
    assert os.listdir(save) == [] and checkpoint.read_latest(save) is None


def test_trainer_save_hands_the_writer_one_tensor_at_a_time(tmp_path, monkeypatch):
    """The training loop's save (gather, write, drop): while the writer takes tensor k, no earlier one is alive."""
    added, alive = [], []
    add = checkpoint.SafetensorsStream.add

    def watched(self, name, array):
        gc.collect()
        alive.append(sum(ref() is not None for ref in added))
        added.append(weakref.ref(array))
        return add(self, name, array)
    monkeypatch.setattr(checkpoint.SafetensorsStream, "add", watched)
    _, weights, _ = train(save=str(tmp_path / "save"), train_iters=1, save_interval=1)
    loaded = checkpoint.load_checkpoint(str(tmp_path / "save"))
    assert len(alive) == len(loaded["model"]) + 2 * len(loaded["optimizer"]["exp_avg"]) and max(alive) == 0
    assert all(np.array_equal(loaded["model"][name], weights[name]) for name in loaded["model"])
