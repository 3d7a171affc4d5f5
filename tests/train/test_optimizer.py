"""AdamW, clipping and the schedule on the current backend against torch's arithmetic (numpy, float64)."""
import math

import numpy as np
import pytest

from mmx import backend, nn, ops
from mmx.train.schedule import LRSchedule
from tolerances import TRAIN_TOLERANCE
from train_reference import adamw_reference

SHAPES = {"weight": (5, 4), "bias": (4,), "table": (3, 6)}
LRS = [1e-2, 5e-3, 2e-2, 1e-3, 1e-2, 7e-3]


def _case(seed=0):
    rng = np.random.RandomState(seed)
    params = {name: rng.randn(*shape).astype(np.float32) for name, shape in SHAPES.items()}
    grads = [{name: (rng.randn(*shape) * 10 ** rng.uniform(-3, 1)).astype(np.float32)
              for name, shape in SHAPES.items()} for _ in LRS]
    return params, grads


def _backend_params(params):
    return [(name, nn.Parameter(ops.tensor(value))) for name, value in params.items()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_arithmetic(weight_decay):
    params, grads = _case()
    named = _backend_params(params)
    optimizer = backend.get().train.AdamW(named, (0.9, 0.95), 1e-8, weight_decay)
    expected = adamw_reference(params, grads, LRS, (0.9, 0.95), 1e-8, weight_decay)
    for step, (step_grads, lr) in enumerate(zip(grads, LRS)):
        optimizer.step([ops.tensor(step_grads[name]) for name, _ in named], lr)
        for name, param in named:
            diff = np.abs(ops.to_numpy(param).astype(np.float64) - expected[step][name]).max()
            assert diff <= TRAIN_TOLERANCE["adamw_vs_torch"], (step, name, diff)


@pytest.mark.backend("torch")
def test_numpy_reference_is_torch_adamw():
    import torch

    params, grads = _case(1)
    tensors = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in params.items()}
    decay = [t for t in tensors.values() if t.ndim >= 2]
    no_decay = [t for t in tensors.values() if t.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=0.0, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    expected = adamw_reference(params, grads, LRS, (0.9, 0.95), 1e-8, 0.1)
    for step, (step_grads, lr) in enumerate(zip(grads, LRS)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(step_grads[name])
        optimizer.step()
        for name, tensor in tensors.items():
            assert np.abs(tensor.detach().numpy() - expected[step][name]).max() <= TRAIN_TOLERANCE["adamw_vs_torch"]


def test_optimizer_state_round_trip_continues_identically():
    params, grads = _case(2)
    first = _backend_params(params)
    optimizer = backend.get().train.AdamW(first, weight_decay=0.05)
    for step_grads, lr in zip(grads[:3], LRS[:3]):
        optimizer.step([ops.tensor(step_grads[name]) for name, _ in first], lr)
    state = optimizer.state_dict()
    assert state["step"] == 3 and set(state["exp_avg"]) == set(SHAPES)
    second = _backend_params({name: ops.to_numpy(param) for name, param in first})
    restored = backend.get().train.AdamW(second, weight_decay=0.05)
    restored.load_state_dict(state)
    for step_grads, lr in zip(grads[3:], LRS[3:]):
        optimizer.step([ops.tensor(step_grads[name]) for name, _ in first], lr)
        restored.step([ops.tensor(step_grads[name]) for name, _ in second], lr)
    for (name, a), (_, b) in zip(first, second):
        assert np.array_equal(ops.to_numpy(a), ops.to_numpy(b)), name


def test_optimizer_state_missing_parameter_names_the_fix():
    params, grads = _case(3)
    named = _backend_params(params)
    optimizer = backend.get().train.AdamW(named)
    optimizer.step([ops.tensor(grads[0][name]) for name, _ in named], 1e-3)
    state = optimizer.state_dict()
    del state["exp_avg"]["bias"]
    with pytest.raises(KeyError, match="no_load_optim"):
        backend.get().train.AdamW(_backend_params(params)).load_state_dict(state)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm(max_norm):
    _, grads = _case(4)
    arrays = list(grads[0].values())
    norm = math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in arrays))
    clipped, reported = backend.get().train.clip_grad_norm([ops.tensor(a) for a in arrays], max_norm)
    assert abs(reported - norm) <= TRAIN_TOLERANCE["grad_norm_rel"] * norm
    scale = min(1.0, max_norm / (norm + 1e-6))
    for array, tensor in zip(arrays, clipped):
        np.testing.assert_allclose(ops.to_numpy(tensor), array * scale, rtol=1e-6, atol=1e-7)


def test_schedule_warmup_cosine_constant():
    cosine = LRSchedule(1.0, train_iters=12, min_lr=0.1, warmup_iters=2, decay_style="cosine")
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(2) == 1.0 and abs(cosine(7) - (0.1 + 0.9 * 0.5)) < 1e-12 and abs(cosine(12) - 0.1) < 1e-12
    assert cosine(50) == pytest.approx(0.1)
    constant = LRSchedule(0.3, train_iters=10, warmup_iters=3, decay_style="constant")
    assert [constant(0), constant(2), constant(9)] == [pytest.approx(0.1), 0.3, 0.3]
    with pytest.raises(ValueError, match="lr_decay_style"):
        LRSchedule(1.0, 10, decay_style="step")

