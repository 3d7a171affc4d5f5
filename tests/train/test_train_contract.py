"""backends/torch/{train,distributed}.py and backends/mindspore/{train,distributed}.py export the same public names, in
the same order, with the same signatures (the framework-free loop calls either one through mmx.backend.get().train
and .distributed)."""
import importlib
import inspect

import pytest


def _public(module):
    names = [name for name, value in vars(module).items() if not name.startswith("_") and callable(value)
             and getattr(value, "__module__", None) == module.__name__]
    return {name: inspect.signature(getattr(module, name)) for name in names}


def test_backend_train_modules_mirror_each_other():
    torch_train = _public(importlib.import_module("mmx.backends.torch.train"))
    mindspore_train = _public(importlib.import_module("mmx.backends.mindspore.train"))
    assert list(torch_train) == list(mindspore_train)
    assert torch_train == mindspore_train
    assert list(torch_train)[:2] == ["AdamW", "trainable_parameters"]
    for method in ("step", "state_dict", "load_state_dict"):
        torch_method = getattr(importlib.import_module("mmx.backends.torch.train").AdamW, method)
        mindspore_method = getattr(importlib.import_module("mmx.backends.mindspore.train").AdamW, method)
        assert inspect.signature(torch_method) == inspect.signature(mindspore_method), method


def test_backend_distributed_modules_mirror_each_other():
    torch_distributed = _public(importlib.import_module("mmx.backends.torch.distributed"))
    mindspore_distributed = _public(importlib.import_module("mmx.backends.mindspore.distributed"))
    assert list(torch_distributed) == list(mindspore_distributed)
    assert torch_distributed == mindspore_distributed
    assert list(torch_distributed) == ["init", "all_reduce_sum", "all_gather_numpy", "all_reduce_numpy",
                                       "broadcast_parameters", "barrier", "fully_shard", "shard_optimizer",
                                       "sum_gradients", "full_tensor", "load_fully_sharded", "local_rows",
                                       "expert_groups", "all_to_all",
                                       "all_reduce_differentiable", "sum_expert_gradients"]


def test_single_process_communication_is_the_identity():
    """Launched as one process, init() joins no group and every collective returns its input."""
    import numpy as np

    from mmx import backend, ops

    distributed = backend.get().distributed
    assert distributed.init() == (0, 1)
    counts = np.array([3, 2 ** 40], np.int64)
    assert np.array_equal(distributed.all_reduce_numpy(counts), counts)
    assert distributed.all_gather_numpy(counts).shape == (1, 2)
    grads = [ops.tensor(np.ones((2, 3), np.float32))]
    assert np.array_equal(ops.to_numpy(distributed.all_reduce_sum(grads)[0]), np.ones((2, 3), np.float32))
    distributed.barrier()


def test_the_other_backends_launcher_is_refused(monkeypatch):
    """torchrun for the mindspore backend (or msrun for torch) would start N unconnected copies: an error instead."""
    from mmx import backend

    other = {"torch": ("MS_WORKER_NUM", "msrun"), "mindspore": ("WORLD_SIZE", "torchrun")}[backend.name()]
    monkeypatch.setenv(other[0], "2")
    with pytest.raises(RuntimeError, match=rf"{other[0]}\S*=2: {other[1]} started these processes.*--backend"):
        backend.get().distributed.init()
