"""The torch training step: AdamW, gradient accumulation, global-norm clipping, bf16 autocast, RNG state.

The framework-free loop (:mod:`mmx.train.loop`) calls these; ``backends/mindspore/train.py`` has the same public
names, signatures and order. Optimizer state crosses backends as numpy: ``{"step": int, "exp_avg": {name: array},
"exp_avg_sq": {name: array}}`` keyed by parameter name, the same layout on both backends, so a checkpoint written by
one continues on the other.

AdamW here *is* ``torch.optim.AdamW``, with its ``fused`` implementation (one kernel over every parameter) for plain
CPU / CUDA tensors and ``foreach`` otherwise (sharded DTensors, other devices): on the 72M bench model (bench/train.py)
an update takes 0.16 s fused vs 2.5 s per-tensor (torch's CPU default) on 2 cores, and the weights differ by at most
6e-8 after a step (foreach: bit-identical to per-tensor); tests/train/test_optimizer.py holds it to the float64
reference. Parameters with ndim < 2 (norms, biases) get no weight decay, as in Megatron.

Fully sharded models (backends/torch/distributed.py ``fully_shard``): parameters, gradients and AdamW moments are
DTensors sharded on dim 0, and each rank's optimizer updates its shard. The state dict gathers the moments to whole
arrays (a collective: every rank calls it) and loading shards them like their parameter, so checkpoints hold the same
whole tensors in either mode; the gradient norm sums the squares of every rank's shards.
"""
import contextlib

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from . import nn as backend_nn


class AdamW:
    """AdamW over ``named_params`` [(name, Parameter)]; the learning rate is passed per step by the scheduler."""

    def __init__(self, named_params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.names = [name for name, _ in named_params]
        self.params = [param for _, param in named_params]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [group for group in groups if group["params"]] or [{"params": [], "weight_decay": 0.0}]
        self.fused = bool(self.params) and all(not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda")
                                               for p in self.params)
        self.torch_optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), eps=eps,
                                                 **({"fused": True} if self.fused else {"foreach": True}))

    def step(self, grads, lr):
        """One update with ``grads`` (list aligned with the parameters) at learning rate ``lr``."""
        for param, grad in zip(self.params, grads):
            param.grad = grad
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr
        self.torch_optimizer.step()
        for param in self.params:
            param.grad = None

    @property
    def step_count(self):
        states = [self.torch_optimizer.state.get(p) for p in self.params]
        return int(states[0]["step"]) if states and states[0] else 0

    def state_dict(self, gather_only=False):
        """Numpy optimizer state (float32 moments keyed by parameter name), backend-neutral layout.

        Sharded moments are gathered whole, one tensor at a time, a collective: with a fully sharded model every rank
        calls this, and ranks that do not write pass ``gather_only`` (they keep nothing and get None).
        """
        step, moments = self.stream_state(gather_only)
        state = {"step": step, "exp_avg": {}, "exp_avg_sq": {}}
        for kind, name, value in moments:
            state[kind][name] = value
        return None if gather_only else state

    def stream_state(self, gather_only=False):
        """(step, iterator of (kind, name, whole float32 numpy moment)): :meth:`state_dict` one moment at a time,
        each gathered as it is drawn (every rank of a fully sharded model draws them all, in the same order;
        ``gather_only`` ranks get None for each)."""
        def moments():
            for name, param in zip(self.names, self.params):
                state = self.torch_optimizer.state.get(param)
                if state:
                    for key in ("exp_avg", "exp_avg_sq"):
                        whole = _whole(state[key])
                        # a copy: the moments are updated in place by later steps
                        yield key, name, None if gather_only else whole.detach().float().cpu().numpy().copy()
                        del whole
        return self.step_count, moments()

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (from either backend); a parameter with no saved moments is an error.

        Moments of a sharded parameter are sharded like it (every rank read the same whole arrays).
        """
        missing = [name for name in self.names if name not in state["exp_avg"]] if state["step"] else []
        if missing:
            raise KeyError(f"optimizer state has no moments for {len(missing)} trainable parameters, e.g. "
                           f"{missing[:3]}; was the checkpoint trained with other freeze flags? Resume with "
                           f"no_load_optim: true to start the optimizer fresh.")
        for name, param in zip(self.names, self.params):
            if not state["step"]:
                continue
            self.torch_optimizer.state[param] = {
                # fused AdamW keeps its step counts on the parameters' device
                "step": torch.tensor(float(state["step"]), device=param.device if self.fused else "cpu"),
                "exp_avg": _like(param, state["exp_avg"][name]),
                "exp_avg_sq": _like(param, state["exp_avg_sq"][name]),
            }


def _whole(tensor):
    """The whole tensor of a sharded DTensor (gathered: a collective), else ``tensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _like(param, array):
    """``array`` (whole, numpy) as a tensor in ``param``'s dtype and device, sharded like it when it is a DTensor."""
    tensor = torch.tensor(np.asarray(array), dtype=param.dtype, device=param.device)
    if isinstance(param, DTensor):  # every rank holds the whole array: each keeps its own shard, nothing is sent
        return distribute_tensor(tensor, param.device_mesh, param.placements, src_data_rank=None)
    return tensor


def trainable_parameters(module):
    """[(name, Parameter)] of ``module`` that require gradients, in state-dict order."""
    return [(name, param) for name, param in backend_nn.named_parameters(module) if param.requires_grad]


def accumulate_grads(params, loss_fn, micro_batches, precision="fp32"):
    """Forward + backward over ``micro_batches``, summing gradients: (sum of losses (float), grads list).

    ``loss_fn(micro_batch)`` returns a scalar tensor already weighted for its share of the global batch (see
    mmx.train.loss), so the summed gradient is the global batch's. ``precision="bf16"`` runs the forward under
    autocast with the fp32 parameters as master weights. The losses are summed on the device in float64 (the same
    bits as adding each one's float on the host) and read once, after the last backward: one device -> host sync per
    step, not one per micro-batch.
    """
    for param in params:
        param.grad = None
    total = None
    for micro_batch in micro_batches:
        with _autocast(precision, params):
            loss = loss_fn(micro_batch)
        loss.backward()
        loss = loss.detach().double()
        total = loss if total is None else total + loss
    grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in params]
    for param in params:
        param.grad = None
    return (0.0 if total is None else float(total)), grads


def clip_grad_norm(grads, max_norm):
    """(grads scaled so their global L2 norm is at most ``max_norm`` (0/None: unchanged), the norm before).

    Sharded gradients (DTensors of a fully sharded model) count with their whole tensors' norms, the same on every
    rank, and are scaled shard by shard (in place: they are the step's own gradients).
    """
    if not grads:
        return grads, 0.0
    norm = torch.linalg.vector_norm(torch.stack(_gradient_norms(grads)))
    norm_value = float(norm)
    if max_norm and norm_value > max_norm:
        # torch.nn.utils.clip_grad_norm_'s arithmetic: coefficient max_norm / (norm + 1e-6), clamped to 1.
        coefficient = max_norm / (norm + 1e-6)
        grads = [_scaled(g, coefficient.to(g.dtype)) for g in grads]
    return grads, norm_value


def _scaled(grad, coefficient):
    """``grad × coefficient``; a sharded gradient is scaled in place, shard by shard (the same products)."""
    if isinstance(grad, DTensor):
        grad.to_local().mul_(coefficient)
        return grad
    return grad * coefficient


def _gradient_norms(grads):
    """Float32 L2 norm of each gradient. A sharded gradient's: the square root of its shards' sums of squares (float64)
    summed over the ranks, one all-reduce for all of them."""
    norms = [None if isinstance(g, DTensor) else torch.linalg.vector_norm(g.float()) for g in grads]
    sharded = [k for k, g in enumerate(grads) if isinstance(g, DTensor)]
    if sharded:
        squares = torch.stack([torch.sum(torch.square(grads[k].to_local().double())) for k in sharded])
        dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=grads[sharded[0]].device_mesh.get_group())
        for k, square in zip(sharded, squares):
            norms[k] = torch.sqrt(square).float()
    return norms


def compile_regions(model, names):
    """``training.compile``: ``torch.compile`` each submodule of ``model`` named in ``names`` ("" = the whole model)
    in place (``nn.Module.compile``: the parameter names and the state dict stay as they are), one compiled region
    per decoder layer / vision block as torchtitan does; compilation happens at each region's first call."""
    for name in names:
        model.get_submodule(name).compile()


def set_seed(seed):
    """Seed torch's generators (CPU and every visible accelerator)."""
    torch.manual_seed(seed)


def get_rng_state():
    """torch's CPU generator state as {name: uint8 array} (the backend tag goes with it in checkpoints)."""
    return {"torch_cpu": torch.get_rng_state().numpy().copy()}


def set_rng_state(state):
    """Restore :func:`get_rng_state` output; False when ``state`` is not torch's (the caller reports it)."""
    if "torch_cpu" not in state:
        return False
    torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch_cpu"], dtype=np.uint8)))
    return True


def _autocast(precision, params):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r} is not supported; use fp32 or bf16")
    device_type = params[0].device.type if params else "cpu"
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def device_name():
    """The name of the device the model computes on, for the peak table of mmx.train.flops (``"NVIDIA H200"``,
    ``"Ascend910B2"``), or None on the CPU (its peak is measured)."""
    from . import device

    name = device()
    if name.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(name))
    if name.startswith("npu"):
        return torch.npu.get_device_name(torch.device(name))
    return None


def evaluate_loss(loss_fn, micro_batches, precision="fp32", params=()):
    """Sum of ``loss_fn(micro_batch)`` over ``micro_batches`` (float) with no gradient recorded, in the training
    precision (``params``: where the autocast device is read): the eval split's loss (mmx.train.evaluate)."""
    total = 0.0
    with torch.no_grad():
        for micro_batch in micro_batches:
            with _autocast(precision, list(params)):
                total += float(loss_fn(micro_batch).detach())
    return total
