"""The MindSpore training step: AdamW, gradient accumulation, global-norm clipping, RNG state.

Same public names, signatures and order as ``backends/torch/train.py``; the optimizer state crosses backends as
numpy in the same layout (``{"step", "exp_avg": {name: array}, "exp_avg_sq": {name: array}}``).

Why AdamW is written here: ``nn.AdamWeightDecay`` has no bias correction, and in-place ``Tensor`` methods silently
do nothing in PyNative (ARCHITECTURE.md, MindSpore landmines). float32 parameters are updated by the fused in-place
``ops.Adam`` kernel with torch's bias correction folded into its lr / eps arguments and torch's decoupled decay applied
before it (AdamW.step); other dtypes are computed out of place and written with ``ops.assign``, in torch's
``_single_tensor_adamw`` order of operations (decay, lerp of the first moment, second moment, bias-corrected
denominator). Both agree with torch to float32 rounding.
Parameters with ndim < 2 (norms, biases) get no weight decay, as in the torch backend.
"""
import json
import math

import mindspore as ms
import numpy as np
from mindspore import ops

from . import nn as backend_nn
from . import ops as backend_ops


_FUSED_ADAM = ops.Adam()


class AdamW:
    """AdamW over ``named_params`` [(name, Parameter)]; the learning rate is passed per step by the scheduler."""

    def __init__(self, named_params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.names = [name for name, _ in named_params]
        self.params = [param for _, param in named_params]
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decays = [float(weight_decay) if param.ndim >= 2 else 0.0 for param in self.params]
        self.exp_avg = [self._moment(name, param, "exp_avg") for name, param in named_params]
        self.exp_avg_sq = [self._moment(name, param, "exp_avg_sq") for name, param in named_params]
        self.step_count = 0

    @staticmethod
    def _moment(name, param, kind):
        return ms.Parameter(ops.zeros(param.shape, ms.float32), name=f"{kind}.{name}", requires_grad=False)

    def step(self, grads, lr):
        """One update with ``grads`` (list aligned with the parameters) at learning rate ``lr``.

        float32 parameters go through MindSpore's fused in-place ``Adam`` kernel (ApplyAdam), one launch per
        parameter instead of ~12. Its update is ``p -= lr' * m / (sqrt(v) + eps')`` with the moments' lerps inside;
        torch's bias correction is passed in as ``lr' = lr * sqrt(bc2) / bc1`` and ``eps' = eps * sqrt(bc2)`` (with
        the beta powers at 0 the kernel applies no correction of its own), and torch's decoupled decay ``p *= 1 - lr
        * wd`` runs first, as in torch: the same update, rounded differently (tests/train/test_optimizer.py).
        ``ops.AdamWeightDecay``, the kernel used before, computes the same on CPU at a fraction of the speed: 1.14 s
        against Adam's 0.08 s for the 58M-row tied embedding of bench/train.py's model (torch's fused AdamW: 0.06
        s), 7 vs 4 ms at 1M elements (2-core AMD EPYC, docs/performance.md). Other dtypes take the composite path
        below, in torch's order of operations.
        """
        self.step_count += 1
        bias_correction1 = 1.0 - self.beta1 ** self.step_count
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** self.step_count)
        step_size = lr / bias_correction1
        fused_lr = lr * bias_correction2_sqrt / bias_correction1
        zero = ms.Tensor(0.0, ms.float32)
        scalars = [ms.Tensor(value, ms.float32) for value in
                   (fused_lr, self.beta1, self.beta2, self.eps * bias_correction2_sqrt)]
        for param, grad, exp_avg, exp_avg_sq, decay in zip(self.params, grads, self.exp_avg, self.exp_avg_sq,
                                                            self.weight_decays):
            if param.dtype == ms.float32 and grad.dtype == ms.float32:
                if decay and lr:
                    ops.assign(param, param * (1.0 - lr * decay))
                _FUSED_ADAM(param, exp_avg, exp_avg_sq, zero, zero, *scalars, grad)
                continue
            grad = ops.cast(grad, ms.float32)
            value = ops.cast(param, ms.float32)
            if decay:
                value = value * (1.0 - lr * decay)
            # torch's lerp(exp_avg, grad, 1 - beta1) for weights < 0.5: exp_avg + w * (grad - exp_avg)
            new_avg = exp_avg + (1.0 - self.beta1) * (grad - exp_avg)
            new_avg_sq = exp_avg_sq * self.beta2 + (1.0 - self.beta2) * (grad * grad)
            denom = ops.sqrt(new_avg_sq) / bias_correction2_sqrt + self.eps
            value = value + (-step_size) * (new_avg / denom)
            ops.assign(exp_avg, new_avg)
            ops.assign(exp_avg_sq, new_avg_sq)
            ops.assign(param, ops.cast(value, param.dtype))

    def state_dict(self, gather_only=False):
        """Numpy optimizer state (float32 moments keyed by parameter name), backend-neutral layout.

        ``gather_only`` (ranks that do not write a fully sharded model's checkpoint; torch only shards): None.
        """
        if gather_only:
            return None
        if not self.step_count:
            return {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}
        return {"step": self.step_count,
                "exp_avg": {name: m.asnumpy().copy() for name, m in zip(self.names, self.exp_avg)},
                "exp_avg_sq": {name: v.asnumpy().copy() for name, v in zip(self.names, self.exp_avg_sq)}}

    def stream_state(self, gather_only=False):
        """(step, iterator of (kind, name, float32 numpy moment)): :meth:`state_dict` one moment at a time (None
        for each with ``gather_only``)."""
        def moments():
            if not self.step_count:
                return
            for kind, values in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                for name, value in zip(self.names, values):
                    yield kind, name, None if gather_only else value.asnumpy().copy()
        return self.step_count, moments()

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (from either backend); a parameter with no saved moments is an error."""
        missing = [name for name in self.names if name not in state["exp_avg"]] if state["step"] else []
        if missing:
            raise KeyError(f"optimizer state has no moments for {len(missing)} trainable parameters, e.g. "
                           f"{missing[:3]}; was the checkpoint trained with other freeze flags? Resume with "
                           f"no_load_optim: true to start the optimizer fresh.")
        self.step_count = int(state["step"])
        if not self.step_count:
            return
        for name, exp_avg, exp_avg_sq in zip(self.names, self.exp_avg, self.exp_avg_sq):
            ops.assign(exp_avg, ms.Tensor(np.asarray(state["exp_avg"][name], np.float32)))
            ops.assign(exp_avg_sq, ms.Tensor(np.asarray(state["exp_avg_sq"][name], np.float32)))


def trainable_parameters(module):
    """[(name, Parameter)] of ``module`` that require gradients, in state-dict order."""
    return [(name, param) for name, param in backend_nn.named_parameters(module) if param.requires_grad]


def accumulate_grads(params, loss_fn, micro_batches, precision="fp32"):
    """Forward + backward over ``micro_batches``, summing gradients: (sum of losses (float), grads list).

    ``loss_fn(micro_batch)`` returns a scalar tensor already weighted for its share of the global batch (see
    mmx.train.loss). MindSpore on CPU computes in fp32 only (bf16 matmul/softmax kernels are missing there).
    """
    if precision != "fp32":
        raise ValueError(f"precision {precision!r}: the MindSpore backend trains in fp32 (bf16 compute has no CPU "
                         f"kernels in MindSpore 2.10); set training.precision: fp32")
    total, grads = 0.0, None
    for micro_batch in micro_batches:
        def forward():
            return loss_fn(micro_batch)
        loss, micro_grads = ms.value_and_grad(forward, None, params)()
        total += float(loss.asnumpy())
        grads = list(micro_grads) if grads is None else [g + m for g, m in zip(grads, micro_grads)]
    if grads is None:
        grads = [ops.zeros(param.shape, param.dtype) for param in params]
    return total, grads


def _sum_of_squares(grad):
    """sum(grad ** 2) in float32: over the last axis first, then the rest. MindSpore 2.10's CPU ReduceSum over all
    elements of a large tensor is ~9x slower than over its rows (the 151,936 x 384 embedding gradient: 485 vs 53 ms
    with the square), and the two-level sum rounds less."""
    grad = ops.cast(grad, ms.float32) if grad.dtype != ms.float32 else grad
    squares = grad * grad
    return ops.sum(ops.sum(squares, -1)) if squares.ndim > 1 else ops.sum(squares)


def clip_grad_norm(grads, max_norm):
    """(grads scaled so their global L2 norm is at most ``max_norm`` (0/None: unchanged), the norm before)."""
    if not grads:
        return grads, 0.0
    squares = ops.stack([_sum_of_squares(g) for g in grads])
    norm = ops.sqrt(ops.sum(squares))
    norm_value = float(norm.asnumpy())
    if max_norm and norm_value > max_norm:
        # torch.nn.utils.clip_grad_norm_'s arithmetic: coefficient max_norm / (norm + 1e-6).
        coefficient = max_norm / (norm + 1e-6)
        grads = [g * ops.cast(coefficient, g.dtype) for g in grads]
    return grads, norm_value


def compile_regions(model, names):
    """``training.compile``: refused on MindSpore, before the first step, with the fix. Measured with MindSpore 2.10
    on CPU (docs/performance.md): ``mindspore.jit(capture_mode="ast")`` cannot parse the framework-free model code;
    ``capture_mode="trace"`` runs a decoder layer of bench/train.py's model 1.2x faster alone (fwd+bwd 0.56 -> 0.46 s)
    but replays host reads (MoE routing counts) as constants without a word, and four traced layers in the model
    gave a wrong first-step loss (22.86 vs 26.20) when the graph's output was read after later ops had run."""
    raise ValueError("training.compile: true is not supported on the mindspore backend (MindSpore 2.10's traced "
                     "graphs gave wrong losses in mmx's models; see docs/performance.md); set training.compile: false")


def set_seed(seed):
    """Seed MindSpore's global generator and the dropout masks' (backends/mindspore/ops.py ``dropout``)."""
    ms.set_seed(seed)
    backend_ops._DROPOUT_RNG["generator"] = np.random.default_rng(seed)  # noqa: SLF001 - this backend's own


def get_rng_state():
    """MindSpore's default generator state and the dropout generator's (JSON bytes) as {name: uint8 array}."""
    dropout = json.dumps(backend_ops._DROPOUT_RNG["generator"].bit_generator.state).encode()  # noqa: SLF001
    return {"mindspore_default": ms.get_rng_state().asnumpy().copy(),
            "mindspore_dropout": np.frombuffer(dropout, np.uint8).copy()}


def set_rng_state(state):
    """Restore :func:`get_rng_state` output; False when ``state`` is not MindSpore's (the caller reports it)."""
    if "mindspore_default" not in state:
        return False
    ms.set_rng_state(ms.Tensor(np.asarray(state["mindspore_default"], np.uint8)))
    if "mindspore_dropout" in state:   # checkpoints written before dropout existed have none
        generator = np.random.default_rng()
        generator.bit_generator.state = json.loads(np.asarray(state["mindspore_dropout"], np.uint8).tobytes())
        backend_ops._DROPOUT_RNG["generator"] = generator  # noqa: SLF001
    return True


def device_name():
    """The name of the device the model computes on, for the peak table of mmx.train.flops (``"Ascend910B2"``:
    CANN's pyACL SoC name), or None on the CPU (its peak is measured) and when pyACL cannot tell."""
    if ms.get_context("device_target") != "Ascend":
        return None
    try:
        import acl   # CANN's Python API, installed with the Ascend toolkit

        return acl.get_soc_name()
    except Exception:  # noqa: BLE001 - no pyACL: the peak is measured instead
        return None


def evaluate_loss(loss_fn, micro_batches, precision="fp32", params=()):
    """Sum of ``loss_fn(micro_batch)`` over ``micro_batches`` (float) with no gradient recorded (PyNative records
    none outside ``value_and_grad``): the eval split's loss (mmx.train.evaluate)."""
    if precision != "fp32":
        raise ValueError(f"precision {precision!r}: the MindSpore backend trains in fp32; set training.precision: fp32")
    return float(sum(float(loss_fn(micro_batch).asnumpy()) for micro_batch in micro_batches))
