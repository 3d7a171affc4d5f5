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

``training.data_parallel: fully_shard`` on MindSpore shards the optimizer state (ZeRO stage 1, on these
collectives: MindSpore's own optimizer parallel needs semi-auto / auto parallel graph mode on Ascend and is not
available on CPU). Weights and gradients stay whole on every rank and the gradients are all-reduced as in replicate;
each trainable parameter belongs to one rank (sizes balanced greedily), whose AdamW alone holds its moments and
updates it; the updated weights then go out from their owners (one broadcast per owner, of their weights
concatenated), so every rank continues with the same weights. The AdamW state per process is ~1/N of the whole.
"""
import os

import mindspore as ms
import numpy as np
from mindspore import ops

import mmx.backends.mindspore as backend
from mmx.parallel import launched_world_size

_group = {"rank": 0, "size": 1, "all_reduce": None, "all_gather": None}
SHARDED = "optimizer state (weights and gradients whole)"   # what fully_shard splits over the ranks


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


def fully_shard(model, unit_names, expert_units=(), ep_size=1):
    """``model`` itself: on MindSpore fully_shard shards the optimizer state only (:func:`shard_optimizer`), the
    weights stay whole on every rank (module docstring), so there are no units to shard. Expert parallel does not
    compose with it here (``EXPERT_FULLY_SHARD``: mmx.expert_parallel refuses the pair before this is called)."""
    if expert_units:
        raise NotImplementedError("fully_shard with expert parallel is not implemented on MindSpore; use "
                                  "training.data_parallel: replicate with training.expert_model_parallel_size")
    return model


def shard_optimizer(make, named_params, *args):
    """The optimizer of a ``fully_shard`` run: ``make(named_params, *args)`` (the backend's AdamW) over this rank's
    share of the parameters, the weights of the others received from their owners after every step (ZeRO-1, module
    docstring). In a single process, ``make(named_params, *args)`` itself."""
    if _group["size"] == 1:
        return make(named_params, *args)
    return _ShardedOptimizer(make, named_params, *args)


def sum_gradients(grads, sharded):
    """The gradients of the global batch, summed over the ranks: weights and gradients are never sharded here, so
    ``sharded`` changes nothing."""
    return all_reduce_sum(grads)


def full_tensor(tensor):
    """The whole of ``tensor``: MindSpore tensors here are never sharded, so ``tensor`` itself."""
    return tensor


def load_fully_sharded(model, unit_names, source, expert_units=(), ep_size=1):
    """``model`` — built under ``nn.empty_init()`` — filled whole from ``source`` (an mm checkpoint opened for
    reading, mmx.checkpoint.store.MMSource), one tensor at a time: MindSpore's fully_shard keeps the weights whole on
    every rank (:func:`fully_shard`), so every rank holds and reads them all; ``model`` itself is returned."""
    from mmx.models.common.weights import stream_mm_state

    return fully_shard(stream_mm_state(model, source), unit_names, expert_units, ep_size)


def local_rows(param):
    """The first row of the whole tensor this rank holds of ``param``: 0, MindSpore's weights are never sharded."""
    return 0


def _broadcast(src, tensor):
    """Rank ``src``'s ``tensor`` on every rank (a collective)."""
    return ops.Broadcast(src)((tensor,))[0]


def _owners(sizes, ranks):
    """The owning rank of each parameter: largest first, each to the least loaded rank (lowest on ties)."""
    load, owners = [0] * ranks, [0] * len(sizes)
    for k in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        owners[k] = min(range(ranks), key=lambda r: (load[r], r))
        load[owners[k]] += sizes[k]
    return owners


class _ShardedOptimizer:
    """AdamW with its moments split over the ranks (:func:`shard_optimizer`); the same ``step`` / ``state_dict`` /
    ``load_state_dict`` as the backend's AdamW, over all of ``named_params``."""

    def __init__(self, make, named_params, *args):
        self.rank, self.size = _group["rank"], _group["size"]
        self.names = [name for name, _ in named_params]
        self.params = [param for _, param in named_params]
        self.owners = _owners([int(np.prod(param.shape)) for param in self.params], self.size)
        self.mine = [k for k, owner in enumerate(self.owners) if owner == self.rank]
        self.local = make([named_params[k] for k in self.mine], *args)
        # the parameters each rank sends after a step, in groups of one dtype (one broadcast each)
        self.groups = []
        for owner in range(self.size):
            members = [k for k in range(len(self.params)) if self.owners[k] == owner]
            for dtype in sorted({self.params[k].dtype for k in members}, key=str):
                self.groups.append((owner, [k for k in members if self.params[k].dtype == dtype]))

    def step(self, grads, lr):
        """Update this rank's parameters with their (all-reduced) ``grads``, then take every other parameter's new
        value from its owner."""
        self.local.step([grads[k] for k in self.mine], lr)
        for owner, members in self.groups:
            flat = _broadcast(owner, ops.cat([self.params[k].value().reshape(-1) for k in members]))
            if owner == self.rank:
                continue
            offset = 0
            for k in members:
                size = int(np.prod(self.params[k].shape))
                ops.assign(self.params[k], flat[offset:offset + size].reshape(self.params[k].shape))
                offset += size

    def local_state_bytes(self):
        """Bytes of AdamW moments this rank holds (measured on its optimizer's state)."""
        state = self.local.state_dict()
        return sum(value.nbytes for kind in ("exp_avg", "exp_avg_sq") for value in state[kind].values())

    def state_dict(self, gather_only=False):
        """The whole moments (every rank calls this: each owner broadcasts its own; ``gather_only`` ranks keep
        nothing and get None), in the backend-neutral layout of AdamW.state_dict."""
        step, moments = self.stream_state(gather_only)
        state = {"step": step, "exp_avg": {}, "exp_avg_sq": {}}
        for kind, name, value in moments:
            state[kind][name] = value
        return None if gather_only else state

    def stream_state(self, gather_only=False):
        """(step, iterator of (kind, name, whole float32 numpy moment)): :meth:`state_dict` one moment at a time,
        each broadcast by its owner as it is drawn (every rank draws them all, in the same order; ``gather_only``
        ranks get None for each)."""
        step = self.local.step_count
        own = {"exp_avg": dict(zip(self.local.names, self.local.exp_avg)),
               "exp_avg_sq": dict(zip(self.local.names, self.local.exp_avg_sq))}

        def moments():
            if not step:
                return
            for kind in ("exp_avg", "exp_avg_sq"):
                for k, (name, param) in enumerate(zip(self.names, self.params)):
                    if self.owners[k] == self.rank:
                        value = own[kind][name].asnumpy().astype(np.float32, copy=False)
                    else:
                        value = np.zeros(tuple(param.shape), np.float32)
                    value = _broadcast(self.owners[k], ms.Tensor(value)).asnumpy()
                    yield kind, name, None if gather_only else value.copy()
                    del value
        return step, moments()

    def load_state_dict(self, state):
        """Restore whole moments (every rank read the same arrays): each rank keeps its own parameters' share."""
        missing = [name for name in self.names if name not in state["exp_avg"]] if state["step"] else []
        if missing:  # checked for all parameters, so every rank refuses together
            raise KeyError(f"optimizer state has no moments for {len(missing)} trainable parameters, e.g. "
                           f"{missing[:3]}; was the checkpoint trained with other freeze flags? Resume with "
                           f"no_load_optim: true to start the optimizer fresh.")
        self.local.load_state_dict(state)


# -- expert parallel (mmx.expert_parallel) ------------------------------------------------------------------------

# MindSpore 2.10 on CPU has no all-to-all (ops.AlltoAll raises under msrun, measured), so mmx.expert_parallel
# gathers every rank's tokens with a differentiable all-reduce instead (module docstring there).
EXPERT_DISPATCH = "all_gather"
# expert parallel does not compose with fully_shard here: ZeRO-1 gives each parameter's moments to one owner, which
# sends the updated weights to every rank, but expert slices differ between the ranks
EXPERT_FULLY_SHARD = False


def expert_groups(ep_size):
    """This rank's expert layout {ep_size, ep_rank, dp_size}: the collectives below work on the whole world (no
    communication groups needed), placing each expert-parallel rank's data in its own slot."""
    return {"ep_size": ep_size, "ep_rank": _group["rank"] % ep_size, "dp_size": _group["size"] // ep_size}


def all_to_all(tensor, recv_splits, send_splits, groups):
    """Not available on MindSpore's CPU collectives (EXPERT_DISPATCH is all_gather); same signature as torch's."""
    raise NotImplementedError("all-to-all is not available on MindSpore's CPU collectives; mmx.expert_parallel "
                              "uses the all-gather dispatcher on MindSpore")


def all_reduce_differentiable(tensor):
    """The sum of ``tensor`` over all ranks, differentiable (AllReduce's gradient is the all-reduced gradient);
    AllReduce takes float32 only, so other float dtypes travel as float32."""
    if _group["size"] == 1:
        return tensor
    if tensor.dtype == ms.float32:
        return _group["all_reduce"](tensor)
    return ops.cast(_group["all_reduce"](ops.cast(tensor, ms.float32)), tensor.dtype)


def sum_expert_gradients(grads, groups):
    """Expert gradients summed over the ranks holding the same experts: each gradient in its expert-parallel
    rank's slot of an (ep_size, ...) buffer of zeros, all-reduced over the world, its slot kept."""
    ep_size, ep_rank = groups["ep_size"], groups["ep_rank"]
    if groups["dp_size"] == 1:
        return list(grads)
    out = []
    for grad in grads:
        zeros = ops.zeros((1,) + tuple(grad.shape), grad.dtype)
        placed = ops.cat([zeros] * ep_rank + [ops.expand_dims(grad, 0)] + [zeros] * (ep_size - ep_rank - 1))
        out.append(all_reduce_differentiable(placed)[ep_rank])
    return out
