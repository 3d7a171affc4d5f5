"""Every layout / checkpoint validation error, asserted by message, raised before any tensor is read.

The checkpoints here are truncated right after their safetensors headers (conftest.truncate_weights): names and
shapes are readable, any tensor read fails with a "truncated" error. Getting the validation message instead proves
the check ran first.
"""
import json
import os

import pytest
from click.testing import CliRunner

from convert_helpers import truncate_weights
from mmx.checkpoint import Layout, LayoutError
from mmx.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile, load_file, save_file
from mmx.checkpoint.store import LATEST_FILE
from mmx.cli import main
from mmx.convert.drivers import hf_to_mm, reshard
from mmx.convert.hf import HFCheckpointError
from mmx.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def truncated(tiny_hf, tmp_path_factory):
    """A truncated tiny Qwen2.5-VL (3 vision blocks with 2 heads, 2 LLM layers with 4 heads / 2 KV heads, vocab
    320)."""
    return truncate_weights(tiny_hf("qwen2_5_vl"), tmp_path_factory.mktemp("truncated") / "hf")


LAYOUT_ERRORS = [
    (dict(llm_pp_layers="1,2", vit_pp_layers="3,0"), "llm_pp_layers [1, 2] sums to 3 but the model has 2 LLM layers"),
    (dict(llm_pp_layers="1,1", vit_pp_layers="2,0"), "vit_pp_layers [2, 0] sums to 2 but the model has 3 vision"),
    (dict(llm_pp_layers="[[1,1]]", vit_pp_layers="[[2,1]]"),
     "vit_pp_layers [2, 1] puts vision blocks on stage 1 after LLM layers started on stage 0 (llm_pp_layers "
     "[1, 1]): vision must be finished before LLM layers start, e.g. vit_pp_layers [3, 0]"),
    (dict(llm_pp_layers="1,1", vit_pp_layers="3,0,0"),
     "vit_pp_layers [3, 0, 0] has 3 entries but llm_pp_layers [1, 1] has 2: both lists need one entry per pipeline"),
    (dict(llm_pp_layers="1,1,0", vit_pp_layers="3,0,0"),
     "pipeline stage 2 holds no layers (vit_pp_layers [3, 0, 0], llm_pp_layers [1, 1, 0])"),
    (dict(vit_pp_layers="3,0"), "--vit-pp-layers [3, 0] has 2 stages but --llm-pp-layers is missing"),
    (dict(llm_pp_layers="1;1"), "--llm-pp-layers '1;1': expected comma-separated layer counts"),
    (dict(tp_size=4), "tp_size 4 does not divide the vision attention heads (vision_heads = 2)"),
    (dict(tp_size=0), "tp_size is 0; it must be at least 1"),
    (dict(ep_size=2), "ep_size 2 does not divide the number of experts (0): this model has no experts, use ep_size 1"),
]


@pytest.mark.parametrize("options,message", LAYOUT_ERRORS)
def test_layout_errors_come_before_tensor_reads(truncated, tmp_path, options, message):
    with pytest.raises(LayoutError) as caught:
        hf_to_mm(truncated, tmp_path / "mm", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "mm").exists()


@pytest.mark.parametrize("overrides,tp_size,message", [
    (dict(text_num_key_value_heads=1, vision_num_heads=4), 2,
     "tp_size 2 does not divide the LLM key/value heads (llm_kv_heads = 1)"),
    (dict(text_num_attention_heads=2, text_num_key_value_heads=2, vision_num_heads=4, mrope_section=[4, 6, 6]), 4,
     "tp_size 4 does not divide the LLM attention heads (llm_heads = 2)"),
    (dict(text_vocab_size=321), 2, "tp_size 2 does not divide the vocabulary size (vocab_size = 321)"),
])
def test_tp_must_divide_heads_and_vocab(tmp_path, overrides, tp_size, message):
    hf_dir = truncate_weights(make_tiny_checkpoint(tmp_path / "full", family="qwen2_vl", **overrides), tmp_path / "t")
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hf_to_mm(hf_dir, tmp_path / "mm", tp_size=tp_size)


def test_unknown_model_type_lists_supported(truncated, tmp_path):
    config = json.loads(open(os.path.join(truncated, "config.json")).read())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type 'llava' is not supported by mmx convert; supported: qwen2_vl, "
                                         "qwen2_5_vl"):
        hf_to_mm(other, tmp_path / "mm")


def test_missing_and_unexpected_hf_tensors(tiny_hf, tmp_path):
    source = tiny_hf("qwen2_vl")
    for case, rename in (("missing", None), ("unexpected", "model.visual.blocks.7.norm1.weight")):
        work = tmp_path / case
        work.mkdir()
        for file in os.listdir(source):
            if not file.endswith(".safetensors"):
                (work / file).write_bytes(open(os.path.join(source, file), "rb").read())
        weights = load_file(os.path.join(source, "model.safetensors"))
        moved = weights.pop("model.language_model.layers.1.mlp.up_proj.weight")
        if rename:
            weights["model.language_model.layers.1.mlp.up_proj.weight"] = moved
            weights[rename] = weights["model.visual.blocks.1.norm1.weight"]
        save_file(weights, work / "model.safetensors")
        truncated = truncate_weights(work, tmp_path / f"{case}_t")
        message = ("1 tensors the mmx.models.qwen2_vl.hf_names table needs are missing (first: "
                   "['model.language_model.layers.1.mlp.up_proj.weight'])" if case == "missing" else
                   "1 tensors are not in the mmx.models.qwen2_vl.hf_names table (first: "
                   "['model.visual.blocks.7.norm1.weight'])")
        with pytest.raises(HFCheckpointError) as caught:
            hf_to_mm(truncated, tmp_path / f"{case}_mm")
        assert message in str(caught.value)


def test_truncated_file_fails_clearly_when_read(truncated, tmp_path):
    with pytest.raises(SafetensorsError, match=r"model.safetensors is truncated: tensor '.*' needs bytes"):
        hf_to_mm(truncated, tmp_path / "mm")
    assert not (tmp_path / "mm" / LATEST_FILE).exists()   # nothing published by a failed conversion


def test_reshard_validates_before_reading(tiny_hf, tmp_path):
    hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm", tp_size=2)
    for rank in ("mp_rank_00", "mp_rank_01"):
        path = tmp_path / "mm" / "release" / rank / "model.safetensors"
        os.truncate(path, SafetensorsFile(path).data_start)
    with pytest.raises(LayoutError, match=r"llm_pp_layers \[3\] sums to 3 but the model has 2 LLM layers"):
        reshard(tmp_path / "mm", tmp_path / "out", llm_pp_layers="3")
    with pytest.raises(SafetensorsError, match="is truncated"):
        reshard(tmp_path / "mm", tmp_path / "out", tp_size=1)


def test_cli_accepts_guide_spelling_and_reports_errors(tiny_hf, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "hf_to_mm", "--hf-dir", tiny_hf("qwen2_vl"), "--mm-dir",
                                  str(tmp_path / "mm"), "--llm-pp-layers", "[[1,1]]", "--vit-pp-layers", "[[2,0]]",
                                  "--tp-size", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "mm" / "release"))[1:] == ["mp_rank_00_000", "mp_rank_00_001",
                                                                   "mp_rank_01_000", "mp_rank_01_001"]
    result = runner.invoke(main, ["convert", "reshard", "--mm-dir", str(tmp_path / "mm"), "--save-dir",
                                  str(tmp_path / "bad"), "--llm-pp-layers", "2", "--vit-pp-layers", "1"])
    assert result.exit_code == 2
    assert "Error: vit_pp_layers [1] sums to 1 but the model has 2 vision blocks" in result.output


def test_cli_mm_to_hf_shards_and_in_place_conversion(tiny_hf, tmp_path):
    import shutil

    from convert_helpers import assert_same_tensors, hf_tensors

    hf_dir = shutil.copytree(tiny_hf("qwen2_vl", tied=True), tmp_path / "hf")
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "hf_to_mm", "--hf-dir", str(hf_dir), "--mm-dir", str(hf_dir),
                                  "--tp-size", "2", "--no-progress"])   # MM inside the HF directory
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["convert", "mm_to_hf", "--mm-dir", str(hf_dir), "--save-hf-dir",
                                  str(tmp_path / "out"), "--max-shard-size", "0.2MB", "--no-progress"])
    assert result.exit_code == 0, result.output
    shards = sorted(name for name in os.listdir(tmp_path / "out") if name.endswith(".safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert f"wrote {len(shards) + 1} weight files" in result.output   # the shards + model.safetensors.index.json
    assert_same_tensors(hf_tensors(tmp_path / "out"), hf_tensors(tiny_hf("qwen2_vl", tied=True)))


def test_ep_size_must_divide_the_experts():
    """No shipped family has experts yet; the rule is checked on a MoE model's numbers directly."""
    from mmx.models.qwen2_vl import plan

    dims = {"vision_layers": 2, "llm_layers": 2, "vision_heads": 2, "llm_heads": 4, "llm_kv_heads": 2,
            "vocab_size": 320, "tied": False, "num_experts": 6}
    assert Layout.build(dims, plan, ep_size=3).ep_size == 3
    with pytest.raises(LayoutError, match=r"ep_size 4 does not divide the number of experts \(6\): choose an ep_size "
                                          r"that divides 6"):
        Layout.build(dims, plan, ep_size=4)
    assert Layout.build(dims, plan, ep_size=3, vit_pp_layers="2,0", llm_pp_layers="1,1").rank_dir(1, 1, 2) == \
        "mp_rank_01_001_002"


@pytest.fixture(scope="module")
def truncated_qwen3_vl(tmp_path_factory):
    """A truncated tiny Qwen3-VL with 4 LLM layers (3 vision blocks with 2 heads; deepstack after blocks 0 and 1,
    feeding LLM layers 0 and 1)."""
    root = tmp_path_factory.mktemp("qwen3_vl_truncated")
    return truncate_weights(make_tiny_checkpoint(root / "full", family="qwen3_vl", text_num_hidden_layers=4),
                            root / "hf")


QWEN3_VL_LAYOUT_ERRORS = [
    (dict(vit_pp_layers="3,0", llm_pp_layers="1,3"),
     "llm_pp_layers [1, 3] puts LLM layers 1..1 on a later stage than the vision tower (which finishes on stage 0, "
     "vit_pp_layers [3, 0]), but layers 0..1 receive its 2 deepstack feature levels: give stage 0 at least 2 LLM "
     "layers, e.g. llm_pp_layers [2, 2]"),
    (dict(vit_pp_layers="2,1,0", llm_pp_layers="0,1,3"),
     "llm_pp_layers [0, 1, 3] puts LLM layers 1..1 on a later stage than the vision tower (which finishes on stage "
     "1, vit_pp_layers [2, 1, 0]), but layers 0..1 receive its 2 deepstack feature levels: give stage 1 at least 2 "
     "LLM layers, e.g. llm_pp_layers [0, 2, 2]"),
    (dict(vit_pp_layers="[[2,1]]", llm_pp_layers="[[2,2]]"),
     "vit_pp_layers [2, 1] puts vision blocks on stage 1 after LLM layers started on stage 0"),
    (dict(tp_size=4), "tp_size 4 does not divide the vision attention heads (vision_heads = 2)"),
]


@pytest.mark.parametrize("options,message", QWEN3_VL_LAYOUT_ERRORS)
def test_qwen3_vl_layouts_are_refused_before_tensor_reads(truncated_qwen3_vl, tmp_path, options, message):
    with pytest.raises(LayoutError) as caught:
        hf_to_mm(truncated_qwen3_vl, tmp_path / "mm", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "mm").exists()
    # the CLI prints the same rule and fix as one error line, no traceback
    args = [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    result = CliRunner().invoke(main, ["convert", "hf_to_mm", "--hf-dir", str(truncated_qwen3_vl), "--mm-dir",
                                       str(tmp_path / "cli"), "--no-progress", *args])
    assert result.exit_code == 2 and f"Error: {message}" in result.output and "Traceback" not in result.output


def test_qwen3_vl_deepstack_layouts_that_fit_are_accepted(truncated_qwen3_vl):
    from mmx.checkpoint.families import family
    from mmx.convert.hf import read_config

    names, plan = family("qwen3_vl")
    dims = names.dimensions(read_config(truncated_qwen3_vl))
    assert dims["deepstack_visual_indexes"] == [0, 1]
    for vit, llm in (("3,0", "2,2"), ("3,0,0", "2,1,1"), ("2,1", "0,4"), ("3", "4")):
        layout = Layout.build(dims, plan, tp_size=2, vit_pp_layers=vit, llm_pp_layers=llm)
        assert sum(layout.llm_pp_layers) == 4


@pytest.fixture(scope="module")
def truncated_glm4v(tmp_path_factory):
    """A truncated tiny GLM-4.1V with 4 LLM layers (2 vision blocks with 2 heads)."""
    root = tmp_path_factory.mktemp("glm4v_truncated")
    return truncate_weights(make_tiny_checkpoint(root / "full", family="glm4v", text_num_hidden_layers=4),
                            root / "hf")


GLM4V_LAYOUT_ERRORS = [
    (dict(vit_pp_layers="1,1", llm_pp_layers="0,4"),
     "vit_pp_layers [1, 1] puts vision blocks on stage 1, but this model's vision tower ends in norm → downsample → "
     "projector on the first stage (rule vision_on_first_stage): put all 2 vision blocks on stage 0, e.g. "
     "vit_pp_layers [2, 0]"),
    (dict(tp_size=4), "tp_size 4 does not divide the vision attention heads (vision_heads = 2)"),
]


@pytest.mark.parametrize("options,message", GLM4V_LAYOUT_ERRORS)
def test_glm4v_layouts_are_refused_before_tensor_reads(truncated_glm4v, tmp_path, options, message):
    with pytest.raises(LayoutError) as caught:
        hf_to_mm(truncated_glm4v, tmp_path / "mm", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "mm").exists()
    args = [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    result = CliRunner().invoke(main, ["convert", "hf_to_mm", "--hf-dir", str(truncated_glm4v), "--mm-dir",
                                       str(tmp_path / "cli"), "--no-progress", *args])
    assert result.exit_code == 2 and f"Error: {message}" in result.output and "Traceback" not in result.output


def test_glm4v_9b_guide_layouts():
    """GLM-4.1V-9B's numbers (transformers' Glm4vConfig defaults + the checkpoint's rope parameters): the guide's
    conversion layout vit_pp_layers [[24,0,0,0]] / llm_pp_layers [[5,12,12,11]] fits with TP 1 or 2; TP 4 does not
    divide its 2 KV heads; a vision tower spread over stages is refused."""
    from transformers import Glm4vConfig

    from mmx.checkpoint.families import family

    config = Glm4vConfig().to_dict()
    config["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                                "mrope_section": [8, 12, 12], "partial_rotary_factor": 0.5}
    names, plan = family("glm4v")
    dims = names.dimensions(config)
    assert (dims["vision_layers"], dims["llm_layers"], dims["llm_kv_heads"]) == (24, 40, 2)
    for tp_size in (1, 2):
        layout = Layout.build(dims, plan, tp_size=tp_size, vit_pp_layers="[[24,0,0,0]]",
                              llm_pp_layers="[[5,12,12,11]]")
        assert layout.pp_size == 4 and layout.rank_dir(tp_size - 1, 3) == f"mp_rank_0{tp_size - 1}_003"
    with pytest.raises(LayoutError, match=r"tp_size 4 does not divide the LLM key/value heads \(llm_kv_heads = 2\)"):
        Layout.build(dims, plan, tp_size=4, vit_pp_layers="24,0,0,0", llm_pp_layers="5,12,12,11")
    with pytest.raises(LayoutError, match="rule vision_on_first_stage"):
        Layout.build(dims, plan, vit_pp_layers="12,12,0,0", llm_pp_layers="0,10,15,15")
