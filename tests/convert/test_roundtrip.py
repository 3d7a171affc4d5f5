"""HF → mm (pp=2, tp=2) → reshard (pp=3, tp=1) → reshard (pp=1, tp=2) → HF gives back the same tensors, byte for
byte, for every Qwen family, tied and untied, fp32 and bf16, new and legacy HF names (issue 4's acceptance)."""
import filecmp
import json
import os

import ml_dtypes
import pytest

from convert_helpers import VISION_DEPTH, assert_same_tensors, hf_tensors
from mmx.checkpoint.store import META_FILE, load_mm
from mmx.convert.drivers import hf_to_mm, mm_to_hf, reshard

CASES = [(family, tied, dtype) for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v",
                                             "glm4v_moe")
         for tied in (False, True) for dtype in ("float32", "bfloat16")]
# (vit_pp_layers, llm_pp_layers) of the 2- and 3-stage layouts. Qwen3-VL's 2 deepstack levels feed LLM layers 0
# and 1, which must sit on the stage where vision finishes, so its vision tower spans stages.
LAYOUTS = {"qwen3_vl": (("2,1", "0,2"), ("[[1,1,1]]", "[[0,0,2]]")),
           "qwen3_vl_moe": (("2,1", "0,2"), ("[[1,1,1]]", "[[0,0,2]]")),
           # GLM-4.1V: every vision block on stage 0 (vision_on_first_stage), the LLM layers spread
           "glm4v": (("2,0", "1,1"), ("[[2,0,0]]", "[[0,1,1]]")),
           # GLM-4.5V: 3 LLM layers (0 dense, 1-2 MoE with per-expert HF tensors)
           "glm4v_moe": (("2,0", "1,2"), ("[[2,0,0]]", "[[0,1,2]]"))}
LLM_LAYERS = {"glm4v_moe": 3}


def _chain(hf_dir, work, family):
    depth = VISION_DEPTH[family]
    (vit2, llm2), (vit3, llm3) = LAYOUTS.get(family, ((f"{depth},0", "1,1"), (f"[[1,{depth - 1},0]]", "[[0,1,1]]")))
    first = hf_to_mm(hf_dir, work / "pp2tp2", tp_size=2, vit_pp_layers=vit2, llm_pp_layers=llm2)
    second = reshard(work / "pp2tp2", work / "pp3tp1", tp_size=1, vit_pp_layers=vit3, llm_pp_layers=llm3)
    third = reshard(work / "pp3tp1", work / "pp1tp2", tp_size=2)
    mm_to_hf(work / "pp1tp2", work / "hf_out")
    return first, second, third


@pytest.mark.parametrize("family,tied,dtype", CASES)
def test_round_trip_is_byte_identical(tiny_hf, tmp_path, family, tied, dtype):
    hf_dir = tiny_hf(family, tied, dtype)
    first, second, third = _chain(hf_dir, tmp_path, family)
    assert sorted(os.listdir(first)) == [META_FILE, "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000",
                                         "mp_rank_01_001"]
    assert sorted(os.listdir(second)) == [META_FILE, "mp_rank_00_000", "mp_rank_00_001", "mp_rank_00_002"]
    assert sorted(os.listdir(third)) == [META_FILE, "mp_rank_00", "mp_rank_01"]
    assert_same_tensors(hf_tensors(tmp_path / "hf_out"), hf_tensors(hf_dir))
    for file in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
                 "preprocessor_config.json"):
        assert filecmp.cmp(os.path.join(hf_dir, file), tmp_path / "hf_out" / file, shallow=False), file
    metadata = json.loads((third / META_FILE).read_text())
    # GLM-4.5V in bf16: the float32 router bias makes the checkpoint "mixed"
    assert metadata["dtype"] == ("mixed" if family == "glm4v_moe" and dtype == "bfloat16" else dtype) and metadata["hf_names"] == "transformers" and metadata["backend"] is None
    assert metadata["parallel"] == {"tp_size": 2, "pp_size": 1, "ep_size": 1,
                                    "vit_pp_layers": [VISION_DEPTH[family]],
                                    "llm_pp_layers": [LLM_LAYERS.get(family, 2)]}


def test_every_layout_loads_the_same_whole_tensors(tiny_hf, tmp_path):
    hf_dir = tiny_hf("qwen2_5_vl", tied=True)
    _chain(hf_dir, tmp_path, "qwen2_5_vl")
    _, want = load_mm(tmp_path / "pp1tp2")
    for layout in ("pp2tp2", "pp3tp1"):
        _, got = load_mm(tmp_path / layout)
        assert_same_tensors(got, want)
    assert "text_decoder.output_layer.weight" not in want   # tied: the embedding serves as the output layer


def test_legacy_hub_names_are_written_back(tiny_hf, tmp_path):
    hf_dir = tiny_hf("qwen2_vl", legacy=True)
    assert any(name.startswith("visual.") for name in hf_tensors(hf_dir))
    _chain(hf_dir, tmp_path, "qwen2_vl")
    assert json.loads((tmp_path / "pp1tp2" / "release" / META_FILE).read_text())["hf_names"] == "legacy"
    assert_same_tensors(hf_tensors(tmp_path / "hf_out"), hf_tensors(hf_dir))


def test_dtype_option_casts_floats(tiny_hf, tmp_path):
    hf_dir = tiny_hf("qwen2_vl")
    hf_to_mm(hf_dir, tmp_path / "mm", dtype="bf16")
    _, tensors = load_mm(tmp_path / "mm")
    source = hf_tensors(hf_dir)
    embedding = tensors["text_decoder.embedding.word_embeddings.weight"]
    assert embedding.dtype == ml_dtypes.bfloat16
    assert embedding.tobytes() == source["model.language_model.embed_tokens.weight"].astype(
        ml_dtypes.bfloat16).tobytes()


def test_sharded_hf_output_has_an_index(tiny_hf, tmp_path):
    hf_dir = tiny_hf("qwen2_5_vl")
    hf_to_mm(hf_dir, tmp_path / "mm")
    files = mm_to_hf(tmp_path / "mm", tmp_path / "sharded", max_shard_bytes=200_000)
    assert len(files) > 3 and files[-1] == "model.safetensors.index.json"
    index = json.loads((tmp_path / "sharded" / files[-1]).read_text())
    assert set(index["weight_map"]) == set(hf_tensors(hf_dir))
    # ... and a sharded HF checkpoint converts back (read through the index) to the same mm tensors
    hf_to_mm(tmp_path / "sharded", tmp_path / "mm_again")
    assert_same_tensors(load_mm(tmp_path / "mm_again")[1], load_mm(tmp_path / "mm")[1])


@pytest.mark.backend("torch")   # transformers' models run on torch
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v"])
def test_transformers_loads_the_output(tiny_hf, tmp_path, family):
    import transformers

    hf_dir = tiny_hf(family, tied=True, dtype="bfloat16")
    _chain(hf_dir, tmp_path, family)
    cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
           "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
           "qwen3_vl_moe": transformers.Qwen3VLMoeForConditionalGeneration,
           "glm4v": transformers.Glm4vForConditionalGeneration}[family]
    model, info = cls.from_pretrained(tmp_path / "hf_out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    source = hf_tensors(hf_dir)
    state = model.state_dict()
    weight = "model.language_model.layers.1.self_attn.k_proj.weight"
    assert (state[weight].float().numpy() == source[weight].astype("float32")).all()   # bf16 → fp32 is exact


def test_conversion_needs_no_framework(tiny_hf, tmp_path):
    """hf_to_mm / reshard / mm_to_hf run with torch, mindspore and transformers made unimportable."""
    import subprocess
    import sys

    script = ("import sys\n"
              "for blocked in ('torch', 'mindspore', 'transformers'):\n"
              "    sys.modules[blocked] = None\n"
              "from mmx.convert.drivers import hf_to_mm, mm_to_hf, reshard\n"
              f"hf_to_mm({tiny_hf('qwen2_vl')!r}, {str(tmp_path / 'a')!r}, tp_size=2)\n"
              f"reshard({str(tmp_path / 'a')!r}, {str(tmp_path / 'b')!r}, vit_pp_layers='2,0', llm_pp_layers='1,1')\n"
              f"mm_to_hf({str(tmp_path / 'b')!r}, {str(tmp_path / 'c')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "MMX_BACKEND": "torch"})
    assert_same_tensors(hf_tensors(tmp_path / "c"), hf_tensors(tiny_hf("qwen2_vl")))


def test_in_memory_hf_read_matches_hf_to_mm(tiny_hf, tmp_path):
    from mmx.convert.drivers import read_hf_as_mm

    hf_dir = tiny_hf("qwen2_5_vl", tied=True, dtype="bfloat16")
    hf_to_mm(hf_dir, tmp_path / "mm")
    written, want = load_mm(tmp_path / "mm")
    metadata, got = read_hf_as_mm(hf_dir)
    assert_same_tensors(got, want)
    assert {key: metadata[key] for key in ("model_type", "hf_names", "model", "parallel")} == \
        {key: written[key] for key in ("model_type", "hf_names", "model", "parallel")}


def test_moe_experts_in_transformers_orientation_round_trip(tmp_path):
    """A Qwen3-VL-MoE saved by transformers (experts (E, out, in)) converts to the mm (E, in, out) layout and back
    to the very bytes it came in, its orientation recorded in the metadata."""
    from mmx.tiny import make_tiny_checkpoint

    hub = make_tiny_checkpoint(str(tmp_path / "hub"), "qwen3_vl_moe")
    saved = make_tiny_checkpoint(str(tmp_path / "saved"), "qwen3_vl_moe", expert_layout="transformers")
    name = "model.language_model.layers.1.mlp.experts.gate_up_proj"
    assert hf_tensors(hub)[name].shape == (4, 64, 48) and hf_tensors(saved)[name].shape == (4, 48, 64)
    (tmp_path / "work").mkdir()
    _, _, third = _chain(saved, tmp_path / "work", "qwen3_vl_moe")
    assert_same_tensors(hf_tensors(tmp_path / "work" / "hf_out"), hf_tensors(saved))
    metadata = json.loads((third / META_FILE).read_text())
    assert metadata["model"]["expert_layout_gate_up"] == metadata["model"]["expert_layout_down"] == "transformers"
    _, mm = load_mm(tmp_path / "work" / "pp1tp2")
    fc1 = mm["text_decoder.decoder.layers.1.mlp.experts.linear_fc1.weight"]
    assert fc1.shape == (4, 64, 48) and (fc1 == hf_tensors(saved)[name].transpose(0, 2, 1)).all()


def test_moe_expert_orientation_the_shapes_cannot_tell_needs_the_option(tmp_path):
    """hidden 64 = 2 x moe_intermediate 32: gate_up (E, 64, 64) fits both orientations; refused before any tensor is
    read, with the option that decides it; with it, the round trip is byte-identical."""
    from convert_helpers import truncate_weights
    from mmx.convert.hf import HFCheckpointError
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen3_vl_moe", text_moe_intermediate_size=32)
    with pytest.raises(HFCheckpointError, match=r"gate_up_proj tensors have shape \[4, 64, 64\], which fits both "
                                                r".*pass --expert-layout hub .* or --expert-layout transformers"):
        hf_to_mm(truncate_weights(hf_dir, tmp_path / "truncated"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    from click.testing import CliRunner

    from mmx.cli import main
    runner = CliRunner()
    refused = runner.invoke(main, ["convert", "hf_to_mm", "--hf-dir", hf_dir, "--mm-dir", str(tmp_path / "cli")])
    assert refused.exit_code == 2 and "pass --expert-layout hub" in refused.output and "Traceback" not in refused.output
    result = runner.invoke(main, ["convert", "hf_to_mm", "--hf-dir", hf_dir, "--mm-dir", str(tmp_path / "mm"),
                                  "--expert-layout", "hub", "--no-progress"])
    assert result.exit_code == 0, result.output
    mm_to_hf(tmp_path / "mm", tmp_path / "back")
    assert_same_tensors(hf_tensors(tmp_path / "back"), hf_tensors(hf_dir))
