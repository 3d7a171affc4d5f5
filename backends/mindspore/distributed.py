"""Data-parallel communication for the framework-free trainer (mindspore.communication), launched by ``msrun``.

Same public names, signatures and order as ``backends/torch/distributed.py``; in a single process every function is
a no-op (or the identity). msrun sets ``MS_WORKER_NUM`` (and ``RANK_SIZE`` / ``RANK_ID``) for each worker;
``mindspore.communication.init()`` joins its scheduler (HCCL on Ascend, MindSpore's own collectives on CPU).

MindSpore 2.10 on CPU, measured with msrun --worker_num=2: the ``AllReduce`` / ``AllGather`` / ``Broadcast``
primitives work out of place; AllReduce takes float32 but not int32/int64/float64, AllGather takes int32 and float32
but not (u)int8, and truncates int64 to its low 32 bits; ``mint.distributed.barrier()`` returns without waiting for
the other rank. So host arrays travel as int32 words through AllGather, the barrier is an AllReduce of one float, and
parameters are overwritten with ``ops.assign`` (in-place Tensor methods silently do nothing in PyNative,
ARCHITECTURE.md).

Fully sharded data parallel is torch-only: MindSpore's counterpart (optimizer parallel in semi-auto / auto parallel
mode) needs graph mode on Ascend and is not available on CPU, so :func:`fully_shard` refuses it.
"""
import os

import mindspore as ms
import numpy as np
from mindspore import ops

import mmx.backends.mindspore as backend
from mmx.parallel import launched_world_size

_group = {"rank": 0, "size": 1, "all_reduce": None, "all_gather": None}


def init():
    """(rank, world size) of this process; joins the msrun job when it started more than one worker.

    On Ascend without an explicit index in ``MMX_DEVICE``, each worker takes device ``DEVICE_ID`` (msrun sets it to
    the worker's local rank), so call this before building the model.
    """
    if launched_world_size("mindspore") <= 1:
        return 0, 1
    if _group["all_reduce"] is None:
        from mindspore.communication import get_group_size, get_rank
        from mindspore.communication import init as join

        requested = os.environ.get("MMX_DEVICE") or "cpu"
        if backend.device() != "cpu" and ":" not in requested:
            backend.set_device(f"{requested}:{int(os.environ.get('DEVICE_ID', '0'))}")
        join()
        _group.update(rank=get_rank(), size=get_group_size(), all_reduce=ops.AllReduce(),
                      all_gather=ops.AllGather())
    return _group["rank"], _group["size"]


def all_reduce_sum(tensors):
    """The element-wise sums of ``tensors`` (e.g. gradients) over all ranks: new tensors, in the same order."""
    if _group["size"] == 1:
        return list(tensors)
    return [_group["all_reduce"](tensor) for tensor in tensors]


def all_gather_numpy(array):
    """(world size, *array.shape) numpy array of every rank's ``array`` (same shape and dtype on every rank).

    Moved as raw bytes (padded to int32 words), so any dtype arrives bit-exact.
    """
    array = np.ascontiguousarray(array)
    if _group["size"] == 1:
        return array[None].copy()
    raw = array.reshape(-1).view(np.uint8)
    padded = np.zeros(-(-raw.size // 4) * 4, np.uint8)
    padded[:raw.size] = raw
    gathered = _group["all_gather"](ms.Tensor(padded.view(np.int32))).asnumpy()
    rows = gathered.reshape(_group["size"], -1).view(np.uint8)[:, :raw.size]
    return np.stack([np.frombuffer(row.tobytes(), array.dtype).reshape(array.shape) for row in rows])


def all_reduce_numpy(array):
    """The sum over ranks of a host ``array`` (counts, losses), in its dtype, added in rank order on every rank."""
    return all_gather_numpy(array).sum(axis=0, dtype=np.asarray(array).dtype)


def broadcast_parameters(params, src=0):
    """Overwrite every parameter in ``params`` with rank ``src``'s values, so all ranks start from the same weights."""
    if _group["size"] == 1:
        return
    broadcast = ops.Broadcast(src)
    for param in params:
        ops.assign(param, broadcast((param.value(),))[0])


def barrier():
    """Wait until every rank arrives here (e.g. rank 0 finished writing a checkpoint)."""
    if _group["size"] > 1:
        _group["all_reduce"](ms.Tensor(np.zeros(1, np.float32))).asnumpy()


def fully_shard(model, unit_names):
    """Refused: on MindSpore, sharding weights and optimizer state is its optimizer parallel (semi-auto / auto
    parallel, graph mode on Ascend), which mmx does not drive and which is not available on CPU."""
    raise NotImplementedError(
        "training.data_parallel: fully_shard is implemented on the torch backend only (torch FSDP2). MindSpore's "
        "equivalent is optimizer parallel in semi-auto / auto parallel mode (graph mode on Ascend), which mmx does "
        "not drive and which is not available on CPU. Use training.data_parallel: replicate (every device holds the "
        "whole model and AdamW state) or train with --backend torch.")


def full_tensor(tensor):
    """The whole of ``tensor``: MindSpore tensors here are never sharded, so ``tensor`` itself."""
    return tensor
