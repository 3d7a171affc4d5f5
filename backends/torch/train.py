"""The torch training step: AdamW, gradient accumulation, global-norm clipping, bf16 autocast, RNG state.

The framework-free loop (:mod:`mmx.train.loop`) calls these; ``backends/mindspore/train.py`` has the same public
names, signatures and order. Optimizer state crosses backends as numpy: ``{"step": int, "exp_avg": {name: array},
"exp_avg_sq": {name: array}}`` keyed by parameter name, the same layout on both backends, so a checkpoint written by
one continues on the other.

AdamW here *is* ``torch.optim.AdamW`` with torch's default implementation choice (per-tensor on CPU, ``foreach``
on CUDA), as the plain reference loop in tests/train/test_parity.py uses it; parameters with ndim < 2 (norms,
biases) get no weight decay, as in Megatron.
"""
import contextlib

import numpy as np
import torch

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
        self.torch_optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), eps=eps)

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

    def state_dict(self):
        """Numpy optimizer state (float32 moments keyed by parameter name), backend-neutral layout."""
        exp_avg, exp_avg_sq = {}, {}
        for name, param in zip(self.names, self.params):
            state = self.torch_optimizer.state.get(param)
            if state:
                # copies: the moments are updated in place by later steps
                exp_avg[name] = state["exp_avg"].detach().float().cpu().numpy().copy()
                exp_avg_sq[name] = state["exp_avg_sq"].detach().float().cpu().numpy().copy()
        return {"step": self.step_count, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (from either backend); a parameter with no saved moments is an error."""
        missing = [name for name in self.names if name not in state["exp_avg"]] if state["step"] else []
        if missing:
            raise KeyError(f"optimizer state has no moments for {len(missing)} trainable parameters, e.g. "
                           f"{missing[:3]}; was the checkpoint trained with other freeze flags? Resume with "
                           f"no_load_optim: true to start the optimizer fresh.")
        for name, param in zip(self.names, self.params):
            if not state["step"]:
                continue
            self.torch_optimizer.state[param] = {
                "step": torch.tensor(float(state["step"])),
                "exp_avg": torch.tensor(np.asarray(state["exp_avg"][name]), dtype=param.dtype, device=param.device),
                "exp_avg_sq": torch.tensor(np.asarray(state["exp_avg_sq"][name]), dtype=param.dtype,
                                           device=param.device),
            }


def trainable_parameters(module):
    """[(name, Parameter)] of ``module`` that require gradients, in state-dict order."""
    return [(name, param) for name, param in backend_nn.named_parameters(module) if param.requires_grad]


def accumulate_grads(params, loss_fn, micro_batches, precision="fp32"):
    """Forward + backward over ``micro_batches``, summing gradients: (sum of losses (float), grads list).

    ``loss_fn(micro_batch)`` returns a scalar tensor already weighted for its share of the global batch (see
    mmx.train.loss), so the summed gradient is the global batch's. ``precision="bf16"`` runs the forward under
    autocast with the fp32 parameters as master weights.
    """
    for param in params:
        param.grad = None
    total = 0.0
    for micro_batch in micro_batches:
        with _autocast(precision, params):
            loss = loss_fn(micro_batch)
        loss.backward()
        total += float(loss.detach())
    grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in params]
    for param in params:
        param.grad = None
    return total, grads


def clip_grad_norm(grads, max_norm):
    """(grads scaled so their global L2 norm is at most ``max_norm`` (0/None: unchanged), the norm before)."""
    if not grads:
        return grads, 0.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    norm_value = float(norm)
    if max_norm and norm_value > max_norm:
        # torch.nn.utils.clip_grad_norm_'s arithmetic: coefficient max_norm / (norm + 1e-6), clamped to 1.
        coefficient = max_norm / (norm + 1e-6)
        grads = [g * coefficient.to(g.dtype) for g in grads]
    return grads, norm_value


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
