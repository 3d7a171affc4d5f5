"""Device → host reads inside one training step (issue 20: no host round trips in the step).

On an accelerator every read of a tensor's value on the host (``.item()``, ``float(t)``, ``.tolist()``,
``.numpy()``) waits for the launch queue to drain. One ``train_step`` of two micro-batches (a padded one with an
image and a packed one, so the vision tower's and the LLM's varlen attention both run) on a tiny Qwen2.5-VL reads
exactly two values: the step's loss (summed over the micro-batches on the device in float64, read once) and the
gradient norm (the clip decision and the non-finite skip need it). A new read fails this test with its call site.
"""
import collections
import os
import traceback

import numpy as np
import pytest

from mmx import backend, models
from mmx.tiny import make_tiny_checkpoint
from mmx.train.finetune import read_weights
from mmx.train.loop import lm_loss, prepare_micro_batch, train_step
from mmx.train.loss import token_weights
from test_step_flops import _batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _site():
    """'path:function' of the innermost project frame outside the ops (who asked for the value)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.relpath(frame.filename, ROOT)
        skipped = path.startswith("..") or ".venv" in path or "tests/" in path
        if skipped or path in ("backends/torch/ops.py", "mmx/ops/__init__.py"):
            continue
        return f"{path}:{frame.name}"
    return "?"


@pytest.fixture
def count_reads(monkeypatch):
    import torch

    sites = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, __original=original, **kwargs):
            if not read.inside:
                read.inside = True
                try:
                    sites[_site()] += 1
                finally:
                    read.inside = False
            return __original(self, *args, **kwargs)
        read.inside = False
        monkeypatch.setattr(torch.Tensor, name, read)
    return sites


def _step(tmp_path, sites=None):
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen2_5_vl")
    model = models.build(hf_dir)
    models.load_mm_state(model, read_weights(hf_dir)[1])
    train = backend.get().train
    named = train.trainable_parameters(model)
    params = [param for _, param in named]
    optimizer = train.AdamW(named, weight_decay=0.1)
    batches = [_batch(model, packed=False), _batch(model, packed=True)]
    weights = token_weights(batches, "per_token")
    prepared = [prepare_micro_batch(model, batch, weight) for batch, weight in zip(batches, weights)]
    if sites is not None:
        sites.clear()
    loss, norm = train_step(train, params, optimizer, lambda item: lm_loss(model, *item), prepared, 1e-3, 1e-4)
    reads = dict(sites) if sites is not None else None
    return loss, norm, reads


@pytest.mark.backend("torch")
def test_one_step_reads_only_the_loss_and_the_norm(tmp_path, count_reads):
    loss, norm, reads = _step(tmp_path, count_reads)
    assert reads == {"backends/torch/train.py:accumulate_grads": 1, "backends/torch/train.py:clip_grad_norm": 1}, reads
    assert np.isfinite(loss) and norm > 1e-4  # the clip ran


def test_the_step_loss_is_the_float64_sum_of_the_micro_batch_losses(tmp_path):
    """The device-side sum equals summing each micro-batch's float32 loss on the host in float64, bit for bit."""
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen2_5_vl")
    model = models.build(hf_dir)
    models.load_mm_state(model, read_weights(hf_dir)[1])
    train, ops = backend.get().train, backend.get().ops
    params = [param for _, param in train.trainable_parameters(model)]
    batches = [_batch(model, packed=False), _batch(model, packed=True)]
    weights = token_weights(batches, "per_token")
    prepared = [prepare_micro_batch(model, batch, weight) for batch, weight in zip(batches, weights)]
    host = 0.0
    for item in prepared:
        host += float(ops.to_numpy(lm_loss(model, *item)))
    total, _ = train.accumulate_grads(params, lambda item: lm_loss(model, *item), prepared)
    assert isinstance(total, float) and total == host, (total, host)


def test_attention_takes_cu_seqlens_as_host_bounds_or_a_tensor():
    """ops.attention's varlen call gives the same numbers with numpy bounds (no device read) as with a tensor."""
    ops = backend.get().ops
    rng = np.random.default_rng(1)
    q, k, v = (ops.tensor(rng.standard_normal((9, 2, 8)).astype(np.float32)) for _ in range(3))
    bounds = np.array([0, 4, 9], np.int32)
    host = ops.to_numpy(ops.attention(q, k, v, causal=True, cu_seqlens=bounds))
    device = ops.to_numpy(ops.attention(q, k, v, causal=True, cu_seqlens=ops.tensor(bounds)))
    assert np.array_equal(host, device)
    with pytest.raises(ValueError, match=r"cu_seqlens \[0, 4, 8\] must rise from 0 to the 9 packed tokens"):
        ops.attention(q, k, v, cu_seqlens=np.array([0, 4, 8], np.int32))
