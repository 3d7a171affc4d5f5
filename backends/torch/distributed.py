"""Data-parallel communication for the framework-free trainer (torch.distributed), launched by ``torchrun``.

``backends/mindspore/distributed.py`` has the same public names, signatures and order. Every function is a no-op
(or the identity) in a single process, so the trainer calls them unconditionally.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process group
reads them (``env://``). The communication backend follows the device: gloo on CPU, nccl on CUDA, hccl on Ascend
(torch_npu is imported by the backend's device selection, never here).

Fully sharded data parallel (``training.data_parallel: fully_shard``) is torch's FSDP2 (``fully_shard``): each
parameter, its gradient and its AdamW moments become DTensors sharded on dim 0 over the ranks (ZeRO-3); a unit's full
weights exist only while its forward / backward runs. Gradients are reduce-scattered as SUMS (mmx's loss weights are
already the global batch's): divide factor 1 with sum-only collectives, which gloo supports (the default factor-1
path asks for ``ReduceOp.PREMUL_SUM``, which gloo refuses).
"""
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp import fully_shard as _fsdp_fully_shard
from torch.distributed.tensor import DTensor

import mmx.backends.torch as backend
from mmx.parallel import launched_world_size

PROCESS_GROUP_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
SHARDED = "weights, gradients and optimizer state"   # what fully_shard splits over the ranks


def init():
    """(rank, world size) of this process; joins the launcher's process group when it started more than one.

    On an accelerator without an explicit index in ``MMX_DEVICE``, rank ``LOCAL_RANK`` of a node takes device
    ``LOCAL_RANK``, so call this before building the model.
    """
    if launched_world_size("torch") <= 1:
        return 0, 1
    if not dist.is_initialized():
        requested = os.environ.get("MMX_DEVICE") or "cpu"
        kind = requested.split(":")[0]
        if kind != "cpu" and ":" not in requested:
            backend.set_device(f"{kind}:{int(os.environ.get('LOCAL_RANK', '0'))}")
        if kind == "cuda":  # nccl's own buffers (barrier) go to the current device
            torch.cuda.set_device(torch.device(backend.device()))
        dist.init_process_group(backend=PROCESS_GROUP_BACKENDS[backend.device().split(":")[0]])
    return dist.get_rank(), dist.get_world_size()


def _world_size():
    """Processes in the data-parallel group (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensors):
    """The element-wise sums of ``tensors`` (e.g. gradients) over all ranks, as a list in the same order.

    The sums are written into the given tensors (torch's collectives work in place) and those are returned.
    """
    if _world_size() == 1:
        return list(tensors)
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return list(tensors)


def all_gather_numpy(array):
    """(world size, *array.shape) numpy array of every rank's ``array`` (same shape and dtype on every rank).

    Moved as raw bytes, so any dtype arrives bit-exact (float64 host counts and losses included).
    """
    array = np.ascontiguousarray(array)
    if _world_size() == 1:
        return array[None].copy()
    payload = torch.from_numpy(array.reshape(-1).view(np.uint8).copy()).to(backend.device())
    gathered = [torch.empty_like(payload) for _ in range(_world_size())]
    dist.all_gather(gathered, payload)
    rows = [np.frombuffer(part.cpu().numpy().tobytes(), array.dtype).reshape(array.shape) for part in gathered]
    return np.stack(rows)


def all_reduce_numpy(array):
    """The sum over ranks of a host ``array`` (counts, losses), in its dtype, added in rank order on every rank."""
    return all_gather_numpy(array).sum(axis=0, dtype=np.asarray(array).dtype)


def broadcast_parameters(params, src=0):
    """Overwrite every parameter in ``params`` with rank ``src``'s values, so all ranks start from the same weights."""
    if _world_size() == 1:
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=src)


def barrier():
    """Wait until every rank arrives here (e.g. rank 0 finished writing a checkpoint)."""
    if _world_size() > 1:
        dist.barrier()


def fully_shard(model, unit_names, expert_units=(), ep_size=1):
    """``model`` sharded over the ranks (FSDP2): each submodule named in ``unit_names`` (dotted names, e.g. every
    decoder layer and vision block) is its own unit, the root holds the rest; ``model`` itself is returned.

    Call it after the weights are loaded and broadcast, before the optimizer is built: the parameters are replaced by
    DTensors (same names and global shapes). Unit weights are gathered for their forward and freed after it
    (``reshard_after_forward``), and again for the backward. In a single process the model is returned unchanged.

    ``expert_units``: under expert parallel (mmx.expert_parallel, groups of ``ep_size`` consecutive ranks), the
    modules holding this rank's slice of a layer's stacked experts. Each is its own unit on the expert-data-parallel
    mesh (the N / EP ranks that hold the same experts; torchtitan's layout), sharded before the layer units around
    it, so its backward reduce-scatters the expert gradients over exactly those ranks; the rest is sharded over all.
    """
    if _world_size() == 1:
        return model
    if expert_units:
        mesh = _expert_data_mesh(ep_size)
        for name in expert_units:
            _fsdp_fully_shard(model.get_submodule(name), mesh=mesh, reshard_after_forward=True)
    for name in unit_names:
        _fsdp_fully_shard(model.get_submodule(name), reshard_after_forward=True)
    _fsdp_fully_shard(model, reshard_after_forward=True)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # sum the ranks' gradients with plain SUM collectives (module docstring)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


_MESHES = {}


def _expert_data_mesh(ep_size):
    """The 1-D mesh of the ranks holding the same experts as this one (``rank % ep_size`` equal), made once."""
    if ep_size not in _MESHES:
        from torch.distributed.device_mesh import init_device_mesh

        world = dist.get_world_size()
        mesh = init_device_mesh(backend.device().split(":")[0], (world // ep_size, ep_size),
                                mesh_dim_names=("expert_data", "expert"))
        _MESHES[ep_size] = mesh["expert_data"]   # rank r sits at (r // ep_size, r % ep_size)
    return _MESHES[ep_size]


def shard_optimizer(make, named_params, *args):
    """The optimizer of a fully sharded model: ``make(named_params, *args)`` (the backend's AdamW). The parameters
    are already DTensor shards (:func:`fully_shard`), so each rank's moments are shards of the whole ones."""
    return make(named_params, *args)


def sum_gradients(grads, sharded):
    """The gradients of the global batch: summed over the ranks (:func:`all_reduce_sum`), except a fully sharded
    (``sharded``) model's, whose backward already reduce-scattered them as sums."""
    return list(grads) if sharded else all_reduce_sum(grads)


def full_tensor(tensor):
    """The whole of ``tensor``: a sharded one (DTensor) is gathered, a collective every rank must call in the same
    order; any other is returned as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def load_fully_sharded(model, unit_names, source, expert_units=(), ep_size=1):
    """``model`` — built under ``nn.empty_init()`` (meta device, no weight storage) — sharded like
    :func:`fully_shard` and then given storage for this rank's shards only, each filled with its own rows of the
    checkpoint tensor, only those rows' bytes read from the safetensors files (``source.read_rows``: the slice
    ``safe_open(...).get_slice(name)[begin:end]`` takes, from the EP files holding them and side by side from TP
    pieces split on another dim; a dim-0 TP split is merged first). ``source``: an mm checkpoint opened for reading
    (mmx.checkpoint.store.MMSource, ``streaming=True``). No rank holds the whole model, and none needs a broadcast
    (each reads the same files). Every parameter must be filled; ``model`` itself is returned. ``expert_units`` /
    ``ep_size``: as for :func:`fully_shard`; the expert slots are then this rank's experts already and ``source``
    gives their rows (mmx.expert_parallel.LocalRows)."""
    from mmx.checkpoint.rows import as_array

    fully_shard(model, unit_names, expert_units, ep_size)
    model.to_empty(device=backend.device())
    params = dict(model.named_parameters())
    filled = set()
    with torch.no_grad():
        for name in source.entries:
            if name not in params:
                raise ValueError(f"load_fully_sharded: the checkpoint holds {name}, which the model has no "
                                 f"parameter for; convert the checkpoint with `mmx convert hf_to_mm` for this model")
            param = params[name]
            local = param.to_local() if isinstance(param, DTensor) else param
            begin = local_rows(param)
            end = begin + (local.shape[0] if local.dim() else 0)
            rows = np.ascontiguousarray(as_array(source.read_rows(name, begin, end)))
            if tuple(rows.shape) != tuple(local.shape):
                raise ValueError(f"load_fully_sharded: {name} rows {begin}:{end} have shape {tuple(rows.shape)} "
                                 f"but this rank's shard is {tuple(local.shape)}; the checkpoint and the config "
                                 f"disagree")
            # numpy has no bf16 torch can take: any float goes through float32 (exact), then the parameter's dtype
            local.copy_(torch.from_numpy(rows.astype(np.float32, copy=False)).to(local.dtype))
            filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise ValueError(f"load_fully_sharded: the checkpoint has no tensor for {len(missing)} parameters (first: "
                         f"{missing[:4]}); convert the checkpoint with `mmx convert hf_to_mm` for this model")
    return model


def local_rows(param):
    """The first row (dim 0) of the whole tensor that this rank's shard of ``param`` starts at (0 when whole)."""
    if not isinstance(param, DTensor):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return int(offset[0]) if len(offset) else 0


# -- expert parallel (mmx.expert_parallel) ------------------------------------------------------------------------

EXPERT_DISPATCH = "all_to_all"   # how mmx.expert_parallel sends tokens to the ranks holding their experts
EXPERT_FULLY_SHARD = True   # expert parallel composes with fully_shard (expert units on their own mesh)


def expert_groups(ep_size):
    """This rank's (expert-parallel group, expert-data-parallel group, its size) for EP groups of ``ep_size``
    consecutive ranks: every rank creates every group, in the same order (torch.distributed.new_group's rule)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ep_group = dp_group = None
    for start in range(0, world, ep_size):
        group = dist.new_group(list(range(start, start + ep_size)))
        if start <= rank < start + ep_size:
            ep_group = group
    for ep_rank in range(ep_size):
        group = dist.new_group(list(range(ep_rank, world, ep_size)))
        if rank % ep_size == ep_rank:
            dp_group = group
    return ep_group, dp_group, world // ep_size


def all_to_all(tensor, recv_splits, send_splits, groups):
    """Rows of ``tensor`` (dim 0) sent to the ranks of the expert-parallel group (``send_splits[i]`` rows to its
    i-th rank), the ``recv_splits[i]`` rows from each concatenated in rank order; differentiable (its gradient is
    the reverse all-to-all)."""
    return _AllToAll.apply(tensor, [int(n) for n in recv_splits], [int(n) for n in send_splits], groups[0])


def all_reduce_differentiable(tensor):
    """The sum of ``tensor`` over all ranks, differentiable (its gradient is the all-reduced gradient)."""
    return _AllReduce.apply(tensor) if _world_size() > 1 else tensor


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, recv_splits, send_splits, group):
        ctx.splits, ctx.group = (recv_splits, send_splits), group
        out = tensor.new_empty((sum(recv_splits),) + tuple(tensor.shape[1:]))
        dist.all_to_all_single(out, tensor.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        recv_splits, send_splits = ctx.splits
        grad_in = grad.new_empty((sum(send_splits),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(grad_in, grad.contiguous(), send_splits, recv_splits, group=ctx.group)
        return grad_in, None, None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def sum_expert_gradients(grads, groups):
    """Expert gradients summed over the ranks holding the same experts (the expert-data-parallel group)."""
    if groups[2] > 1:
        for grad in grads:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=groups[1])
    return list(grads)
