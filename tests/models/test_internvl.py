"""InternVL3 (``internvl``) against transformers 5.23, both vision towers (300M-style: LayerNorm + q/k/v biases;
6B-style: RMSNorm + qk-norm, no q/k/v biases, a position table resampled to the tile grid) and both HF layouts
(transformers' ``-hf`` names as save_pretrained writes them; OpenGVLab's original remote-code names, which
transformers runs here through the renaming in mmx.reference). The batch holds a 60x90 image that becomes 2 tiles +
a thumbnail, a one-tile image, a 4-frame video (4 tiles, frames as lines) and a text-only row, padded.

Also: hf_to_mm → TP 2 x PP 2 → TP 1 x PP 3 → mm_to_hf gives back every HF tensor (names, dtypes, bytes) in the
layout it came from; vision heads that the TP size does not divide are refused before any tensor is read.
"""
import filecmp
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from mmx import nn, ops, reference
from mmx.checkpoint.safetensors_io import load_file
from mmx.checkpoint.store import META_FILE, load_mm
from mmx.convert.drivers import hf_to_mm, mm_to_hf, reshard
from mmx.tiny import make_tiny_checkpoint
from tolerances import MODEL_GRAD_RTOL, MODEL_LOGITS_ATOL

from grads_runner import mmx_loss_and_grads
from model_helpers import model_inputs, relative_errors

# (vision variant, HF layout, tied): every tower and layout, tied and untied
VARIANTS = [("300m", "hf", False), ("300m", "original", True), ("6b", "hf", True), ("6b", "original", False)]
_cache = {}


class InternVLCheckpoint:
    def __init__(self, root, variant, layout, tied):
        self.hf_dir = make_tiny_checkpoint(str(root / "hf"), "internvl", tied=tied, vision_variant=variant,
                                           hf_layout=layout)
        self.mm_dir = str(root / "mm")
        hf_to_mm(self.hf_dir, self.mm_dir)
        self.metadata, self.tensors = load_mm(self.mm_dir)

    def build(self):
        from mmx import models

        return models.load_mm_state(models.build(self.hf_dir), self.tensors)


@pytest.fixture(scope="session")
def internvl(tmp_path_factory):
    def get(variant, layout, tied):
        key = (variant, layout, tied)
        if key not in _cache:
            _cache[key] = InternVLCheckpoint(tmp_path_factory.mktemp(f"internvl_{variant}_{layout}"), *key)
        return _cache[key]
    return get


@pytest.mark.parametrize("variant,layout,tied", VARIANTS)
def test_internvl_logits_match_transformers(internvl, variant, layout, tied):
    ckpt = internvl(variant, layout, tied)
    assert ckpt.metadata["hf_names"] == {"hf": "legacy", "original": "original"}[layout]
    inputs = reference.build_inputs(ckpt.hf_dir, padding_side="left")
    assert len(inputs["pixel_values"]) == 3 + 1 + 4          # tiles: 2 + thumbnail, 1, 4 video frames
    assert (inputs["attention_mask"] == 0).any()
    expected = reference.hf_logits(ckpt.hf_dir, inputs)
    with nn.inference_mode():
        logits = ops.to_numpy(ckpt.build()(**model_inputs(inputs)))
    real = inputs["attention_mask"].astype(bool)
    assert logits.shape == expected.shape
    assert np.abs(logits - expected)[real].max() <= MODEL_LOGITS_ATOL


@pytest.mark.backend("torch")
@pytest.mark.parametrize("variant,layout,tied", [VARIANTS[0], VARIANTS[3]])
def test_internvl_loss_and_grads_match_transformers(internvl, variant, layout, tied, tmp_path):
    ckpt = internvl(variant, layout, tied)
    inputs = reference.build_inputs(ckpt.hf_dir, with_labels=True)
    hf_loss, hf_grads = reference.hf_loss_and_grads(ckpt.hf_dir, inputs)
    loss, grads = mmx_loss_and_grads(ckpt.hf_dir, ckpt.tensors, inputs)
    assert abs(loss - hf_loss) / abs(hf_loss) <= MODEL_GRAD_RTOL
    # transformers' gradients (in-memory -hf names) through the converter itself
    grads_dir = tmp_path / "hf_grads"
    grads_dir.mkdir()
    shutil.copy(os.path.join(ckpt.hf_dir, "config.json"), grads_dir / "config.json")
    save_file(hf_grads, str(grads_dir / "model.safetensors"), metadata={"format": "pt"})
    hf_to_mm(str(grads_dir), str(tmp_path / "mm_grads"))
    want = load_mm(str(tmp_path / "mm_grads"))[1]
    assert set(grads) == set(want)
    errors = relative_errors(grads, want)
    assert max(errors.values()) <= MODEL_GRAD_RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("variant,layout,tied", VARIANTS)
def test_internvl_round_trip_is_byte_identical_in_its_layout(internvl, variant, layout, tied, tmp_path):
    ckpt = internvl(variant, layout, tied)
    first = hf_to_mm(ckpt.hf_dir, tmp_path / "tp2pp2", tp_size=2, vit_pp_layers="2,0", llm_pp_layers="1,1")
    second = reshard(tmp_path / "tp2pp2", tmp_path / "pp3", tp_size=1, vit_pp_layers="2,0,0",
                     llm_pp_layers="0,1,1")
    assert sorted(os.listdir(first)) == [META_FILE, "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000",
                                         "mp_rank_01_001"]
    assert sorted(os.listdir(second)) == [META_FILE, "mp_rank_00_000", "mp_rank_00_001", "mp_rank_00_002"]
    _, resharded = load_mm(tmp_path / "pp3")
    assert sorted(resharded) == sorted(ckpt.tensors)
    assert all(resharded[name].tobytes() == ckpt.tensors[name].tobytes() for name in ckpt.tensors)
    mm_to_hf(tmp_path / "pp3", tmp_path / "hf_out")
    got, want = (load_file(os.path.join(d, "model.safetensors")) for d in (tmp_path / "hf_out", ckpt.hf_dir))
    assert sorted(got) == sorted(want)                     # the same names: the layout it came from
    assert all(got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes() for k in want)
    assert filecmp.cmp(os.path.join(ckpt.hf_dir, "config.json"), tmp_path / "hf_out" / "config.json", shallow=False)
    assert json.loads((second / META_FILE).read_text())["hf_names"] == ckpt.metadata["hf_names"]


def test_internvl_vision_heads_that_tp_does_not_divide_are_refused(tmp_path):
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "internvl", vision_variant="6b",
                                  vision_num_attention_heads=4, vision_hidden_size=36)
    hf_to_mm(hf_dir, tmp_path / "tp2", tp_size=2)        # 4 heads: TP 2 splits them evenly
    with pytest.raises(ValueError, match=r"vision attention heads"):
        hf_to_mm(hf_dir, tmp_path / "tp3", tp_size=3)


def test_internvl_chat_config_is_refused_naming_the_fix(internvl, tmp_path):
    """An original OpenGVLab directory's own config.json (model_type internvl_chat, llm_config / vision_config)
    is refused by convert, build, infer and the data pipeline with one line naming the -hf files to copy; with the
    -hf config.json beside the original safetensors it converts (the tensors read as they are)."""
    from mmx import infer
    from mmx.data.config import load_data_config
    from mmx.checkpoint.families import UnknownModelError
    from mmx.data.processing import Preprocessor

    ckpt = internvl("300m", "original", True)
    directory = tmp_path / "InternVL3-1B"
    shutil.copytree(ckpt.hf_dir, directory)
    hf_config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
        "ps_version": "v2", "select_layer": -1, "template": "internvl2_5", "force_image_size": 56,
        "llm_config": dict(hf_config["text_config"], architectures=["Qwen2ForCausalLM"]),
        "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "qkv_bias": True,
                          "qk_normalization": False, "norm_type": "layer_norm", "hidden_size": 32}}))
    message = (r"config.json: model_type 'internvl_chat' is OpenGVLab's remote-code InternVL config .* copy "
               r"config.json, preprocessor_config.json, .* from the matching -hf repo "
               r"\(e.g. OpenGVLab/InternVL3-8B-hf\)")
    with pytest.raises(UnknownModelError, match=message):
        hf_to_mm(str(directory), tmp_path / "mm")
    from mmx import models
    with pytest.raises(ValueError, match=message):
        models.build(str(directory))
    with pytest.raises(ValueError, match=message):
        infer.load(str(directory))
    with pytest.raises(ValueError, match=message):
        Preprocessor(load_data_config({"model_name_or_path": str(directory), "dataset": "x.json"}))
    shutil.copy(os.path.join(ckpt.hf_dir, "config.json"), directory / "config.json")     # the fix
    hf_to_mm(str(directory), tmp_path / "mm_fixed")
    _, tensors = load_mm(tmp_path / "mm_fixed")
    assert all(tensors[name].tobytes() == ckpt.tensors[name].tobytes() for name in ckpt.tensors)


def test_internvl_dynamic_rope_is_plain_within_max_positions(tmp_path):
    """InternVL's Qwen2.5 llm_config may carry 'dynamic' NTK rope scaling: transformers keeps plain RoPE until a
    position passes max_position_embeddings, so within it mmx's logits equal transformers'; past it mmx refuses."""
    from mmx import models

    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "internvl", text_rope_parameters=dynamic)
    hf_to_mm(hf_dir, tmp_path / "mm")
    model = models.load_mm_state(models.build(hf_dir), load_mm(tmp_path / "mm")[1])
    assert model.config.plain_rope_positions == 4096
    inputs = reference.build_inputs(hf_dir, names=("image_small", "text"), padding_side="left")
    expected = reference.hf_logits(hf_dir, inputs)
    assert reference._hf_model(hf_dir).model.language_model.rotary_emb.rope_type == "dynamic"
    with nn.inference_mode():
        logits = ops.to_numpy(model(**model_inputs(inputs)))
    real = inputs["attention_mask"].astype(bool)
    assert np.abs(logits - expected)[real].max() <= MODEL_LOGITS_ATOL
    short = make_tiny_checkpoint(str(tmp_path / "short"), "internvl", text_rope_parameters=dynamic,
                                 text_max_position_embeddings=8)
    hf_to_mm(short, tmp_path / "mm_short")
    model = models.load_mm_state(models.build(short), load_mm(tmp_path / "mm_short")[1])
    with pytest.raises(ValueError, match=r"positions reach 9 but .* 'dynamic' rope scaling.* within 8"):
        model(input_ids=ops.tensor(np.arange(20, 29, dtype=np.int64)[None]))
