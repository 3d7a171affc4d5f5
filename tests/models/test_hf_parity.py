"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE / GLM-4.1V / GLM-4.5V in mmx against transformers: logits, loss, gradients;
and MindSpore against torch.

The batch mixes two image sizes, a video and a text-only prompt, padded (right for untied checkpoints, left for
tied ones), built by the checkpoint's own processor and chat template (mmx.reference; transformers' GLM-4.1V runs
the image rows and the video row as two groups, its video frames using the image token).
"""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from mmx import nn, ops, reference
from mmx.checkpoint.store import load_mm
from mmx.convert.drivers import hf_to_mm
from tolerances import MODEL_GRAD_RTOL, MODEL_LOGITS_ATOL

from grads_runner import mmx_loss_and_grads
from model_helpers import VARIANTS, model_inputs, relative_errors, run_backend

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_logits_match_transformers(checkpoint, family, tied):
    ckpt = checkpoint(family, tied)
    inputs = reference.build_inputs(ckpt.hf_dir, padding_side="left" if tied else "right")
    assert (inputs["attention_mask"] == 0).any()                    # the batch really is padded
    expected = reference.hf_logits(ckpt.hf_dir, inputs)
    with nn.inference_mode():
        logits = ops.to_numpy(ckpt.build()(**model_inputs(inputs)))
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    real = inputs["attention_mask"].astype(bool)
    assert np.abs(logits - expected)[real].max() <= MODEL_LOGITS_ATOL


def _hf_grads_as_mm(ckpt, hf_grads, tmp_path):
    """Transformers' gradients renamed / fused into mm names by the converter itself (written as an HF dir)."""
    grads_dir = tmp_path / "hf_grads"
    grads_dir.mkdir()
    shutil.copy(os.path.join(ckpt.hf_dir, "config.json"), grads_dir / "config.json")
    if ckpt.family == "glm4v_moe":
        hf_grads = _glm4v_moe_hub_names(hf_grads, ckpt.hf_dir)
    save_file(hf_grads, str(grads_dir / "model.safetensors"), metadata={"format": "pt"})
    hf_to_mm(str(grads_dir), str(tmp_path / "mm_grads"))
    return load_mm(str(tmp_path / "mm_grads"))[1]


def _glm4v_moe_hub_names(hf_grads, hf_dir):
    """GLM-4.5V gradients under the hub's names: transformers' in-memory stacked experts (E, 2F, C) / (E, C, F) as
    per-expert linears, and zeros for the correction bias (a buffer there, frozen in mmx: dropped again after)."""
    out = {}
    for name, grad in hf_grads.items():
        prefix, _, kind = name.rpartition(".experts.")
        if kind == "gate_up_proj":
            half = grad.shape[1] // 2
            for e, rows in enumerate(grad):
                out[f"{prefix}.experts.{e}.gate_proj.weight"] = np.ascontiguousarray(rows[:half])
                out[f"{prefix}.experts.{e}.up_proj.weight"] = np.ascontiguousarray(rows[half:])
        elif kind == "down_proj":
            for e, rows in enumerate(grad):
                out[f"{prefix}.experts.{e}.down_proj.weight"] = np.ascontiguousarray(rows)
        else:
            out[name] = grad
            if name.endswith(".mlp.gate.weight"):
                out[name[:-len("weight")] + "e_score_correction_bias"] = np.zeros(grad.shape[0], np.float32)
    return out


@pytest.mark.backend("torch")
@pytest.mark.parametrize("family,tied", VARIANTS)
def test_loss_and_grads_match_transformers(checkpoint, family, tied, tmp_path):
    ckpt = checkpoint(family, tied)
    inputs = reference.build_inputs(ckpt.hf_dir, with_labels=True)
    hf_loss, hf_grads = reference.hf_loss_and_grads(ckpt.hf_dir, inputs)
    loss, grads = mmx_loss_and_grads(ckpt.hf_dir, ckpt.tensors, inputs)
    assert abs(loss - hf_loss) / abs(hf_loss) <= MODEL_GRAD_RTOL
    want = _hf_grads_as_mm(ckpt, hf_grads, tmp_path)
    frozen = {name for name in want if name.endswith(".router.e_score_correction_bias")}   # GLM-4.5V: a buffer
    want = {name: grad for name, grad in want.items() if name not in frozen}
    assert set(grads) == set(want)
    errors = relative_errors(grads, want)
    assert max(errors.values()) <= MODEL_GRAD_RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


# MindSpore's CPU backward is slow: an image, a video and padding, without the other two samples.
MINDSPORE_GRAD_SAMPLES = ("image_small", "video")


@pytest.mark.backend("mindspore")
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe"])
def test_mindspore_grads_match_torch(checkpoint, family, tmp_path):
    ckpt = checkpoint(family, family != "qwen2_vl")
    run_backend("torch", os.path.join(HERE, "grads_runner.py"), ckpt.hf_dir, ckpt.mm_dir, tmp_path / "torch.npz",
                ",".join(MINDSPORE_GRAD_SAMPLES))
    torch_run = np.load(tmp_path / "torch.npz")
    inputs = reference.build_inputs(ckpt.hf_dir, MINDSPORE_GRAD_SAMPLES, with_labels=True)
    loss, grads = mmx_loss_and_grads(ckpt.hf_dir, ckpt.tensors, inputs)
    assert abs(loss - float(torch_run["loss"])) / abs(float(torch_run["loss"])) <= MODEL_GRAD_RTOL
    want = {name[len("grad/"):]: torch_run[name] for name in torch_run.files if name.startswith("grad/")}
    assert set(grads) == set(want)
    errors = relative_errors(grads, want)
    assert max(errors.values()) <= MODEL_GRAD_RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


def test_image_token_count_mismatch_names_both_counts(checkpoint):
    ckpt = checkpoint("qwen2_5_vl", False)
    inputs = reference.build_inputs(ckpt.hf_dir, ("image_large",))
    ids = inputs["input_ids"].copy()
    ids[0, np.nonzero(ids[0] == 5)[0][0]] = 10                # one <|image_pad|> fewer than the features
    with pytest.raises(ValueError, match=r"input_ids hold 5 image tokens .* give 6 features"):
        ckpt.build()(**dict(model_inputs(inputs), input_ids=ids, mm_token_type_ids=None))
    assert json.load(open(os.path.join(ckpt.hf_dir, "config.json")))["image_token_id"] == 5
