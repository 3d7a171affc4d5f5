"""Training parity, 20 fp32 steps on the tiny Qwen2.5-VL, Qwen3-VL, GLM-4.1V, Qwen3-VL-MoE and GLM-4.5V (with their
load-balancing loss) and InternVL3 (1-D RoPE: transformers' default positions), on real digit images: mmx-torch vs
a plain transformers + torch.optim.AdamW loop (same weights, batches, lr, clipping): ≤ 1e-4 relative; mmx-MindSpore
vs mmx-torch (torch in a subprocess): ≤ 1e-3 relative; a checkpoint trained on the other backend resumes here on the
uninterrupted curve."""
import os
import subprocess
import sys

import numpy as np
import pytest

from parity_runner import STEPS, TRAINING, batches, mmx_losses, prepare
from tolerances import TRAIN_TOLERANCE

HERE = os.path.dirname(os.path.abspath(__file__))


FAMILIES = ("qwen2_5_vl", "qwen3_vl", "glm4v", "qwen3_vl_moe", "glm4v_moe", "internvl")
# Training overrides per family: the MoE families train with the load-balancing loss, weighted high enough to matter.
OVERRIDES = {"qwen3_vl_moe": {"router_aux_loss_coef": 0.05}, "glm4v_moe": {"router_aux_loss_coef": 0.05}}


def _arguments(overrides):
    return [f"{key}={value}" for key, value in overrides.items()]


def transformers_losses(work, family):
    """The plain loop: HF model, HF loss (mean over supervised tokens), clip_grad_norm_, torch AdamW."""
    import torch
    from transformers import AutoModelForImageTextToText

    hf_dir, _ = prepare(work, family)
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": TRAINING["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=TRAINING["lr"])
    config = model.config
    aux = OVERRIDES.get(family, {}).get("router_aux_loss_coef")
    if aux:   # transformers adds router_aux_loss_coef x aux_loss when asked for router logits
        config.text_config.router_aux_loss_coef = aux
    losses = []
    for batch in batches(work, family):
        inputs = {key: torch.from_numpy(np.ascontiguousarray(batch[key])) for key in
                  ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw") if key in batch}
        ids = batch["input_ids"]
        if config.model_type != "internvl":      # InternVL's 1-D RoPE: arange positions (right padding)
            inputs["mm_token_type_ids"] = torch.from_numpy(np.where(ids == config.image_token_id, 1, 0))
        loss = model(**inputs, **({"output_router_logits": True} if aux else {})).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, TRAINING["clip_grad"])
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.backend("torch")
@pytest.mark.parametrize("family", FAMILIES)
def test_mmx_torch_matches_transformers_adamw_loop(tmp_path, family):
    ours = mmx_losses(str(tmp_path), family, **OVERRIDES.get(family, {}))
    reference = transformers_losses(str(tmp_path), family)
    assert len(ours) == len(reference) == STEPS
    assert reference[-1] < reference[0]  # it trains
    relative = [abs(a - b) / abs(b) for a, b in zip(ours, reference)]
    assert max(relative) <= TRAIN_TOLERANCE["parity_vs_transformers_rel"], relative


@pytest.mark.backend("mindspore")
@pytest.mark.parametrize("family", FAMILIES)
def test_mmx_mindspore_matches_mmx_torch(tmp_path, family):
    ours = mmx_losses(str(tmp_path), family, **OVERRIDES.get(family, {}))
    run = subprocess.run([sys.executable, os.path.join(HERE, "parity_runner.py"), str(tmp_path),
                          str(tmp_path / "torch.npz"), family, *_arguments(OVERRIDES.get(family, {}))],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, MMX_BACKEND="torch"))
    assert run.returncode == 0, run.stderr[-3000:]
    reference = np.load(str(tmp_path / "torch.npz"))["losses"]
    relative = [abs(a - b) / abs(b) for a, b in zip(ours, reference)]
    assert max(relative) <= TRAIN_TOLERANCE["parity_mindspore_vs_torch_rel"], relative


@pytest.mark.parametrize("family,first_steps,total_steps", [("qwen3_vl", STEPS // 2, STEPS), ("glm4v", 2, 4),
                                                             ("qwen3_vl_moe", 2, 4), ("glm4v_moe", 2, 4),
                                                             ("internvl", 2, 4)])
def test_checkpoint_of_the_other_backend_resumes_on_the_same_curve(tmp_path, family, first_steps, total_steps):
    """``first_steps`` on the other backend (its checkpoint: weights + AdamW state), the rest here (GLM-4.1V,
    Qwen3-VL-MoE, GLM-4.5V and InternVL3 shortened to 2 + 2 steps)."""
    from mmx import backend

    other = {"torch": "mindspore", "mindspore": "torch"}[backend.name()]
    extra = OVERRIDES.get(family, {})
    run = subprocess.run([sys.executable, os.path.join(HERE, "parity_runner.py"), str(tmp_path),
                          str(tmp_path / "first.npz"), family, f"train_iters={first_steps}",
                          f"save={tmp_path / 'other'}", *_arguments(extra)], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ, MMX_BACKEND=other))
    assert run.returncode == 0, run.stderr[-3000:]
    first = list(np.load(str(tmp_path / "first.npz"))["losses"])
    resumed = mmx_losses(str(tmp_path), family, train_iters=total_steps, load=str(tmp_path / "other"),
                         save=str(tmp_path / "here"), **extra)
    uninterrupted = mmx_losses(str(tmp_path), family, train_iters=total_steps, **extra)
    assert len(first) == first_steps and len(first) + len(resumed) == len(uninterrupted) == total_steps
    relative = [abs(a - b) / abs(b) for a, b in zip(first + resumed, uninterrupted)]
    assert max(relative) <= TRAIN_TOLERANCE["cross_backend_loss_rel"], relative
    if total_steps == STEPS:
        assert uninterrupted[-1] < uninterrupted[0] / 2           # it learns
