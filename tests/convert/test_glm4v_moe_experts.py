"""GLM-4.5V conversion: the hub's per-expert linears stacked into (E, in, out) and split back, the router's
correction bias float32 whatever --dtype says, and an MTP layer past num_hidden_layers skipped with a note."""
import numpy as np
from safetensors.numpy import load_file, save_file

from convert_helpers import assert_same_tensors, hf_tensors
from mmx.checkpoint.store import load_mm
from mmx.convert.drivers import hf_to_mm, mm_to_hf

LAYER = "model.language_model.layers.1.mlp."
MM = "text_decoder.decoder.layers.1.mlp."


def test_per_expert_tensors_stack_in_the_mm_layout(tiny_hf, tmp_path):
    hf_dir = tiny_hf("glm4v_moe")
    hf = hf_tensors(hf_dir)
    hf_to_mm(hf_dir, tmp_path / "mm")
    _, mm = load_mm(tmp_path / "mm")
    fc1, fc2 = mm[MM + "experts.linear_fc1.weight"], mm[MM + "experts.linear_fc2.weight"]
    assert fc1.shape == (8, 64, 48) and fc2.shape == (8, 24, 64)
    for e in range(8):
        np.testing.assert_array_equal(fc1[e, :, :24], hf[LAYER + f"experts.{e}.gate_proj.weight"].T)
        np.testing.assert_array_equal(fc1[e, :, 24:], hf[LAYER + f"experts.{e}.up_proj.weight"].T)
        np.testing.assert_array_equal(fc2[e], hf[LAYER + f"experts.{e}.down_proj.weight"].T)
    np.testing.assert_array_equal(mm[MM + "shared_experts.linear_fc1.weight"],
                                  np.concatenate([hf[LAYER + "shared_experts.gate_proj.weight"],
                                                  hf[LAYER + "shared_experts.up_proj.weight"]]))


def test_bf16_conversion_keeps_the_correction_bias_float32(tiny_hf, tmp_path):
    hf_dir = tiny_hf("glm4v_moe")
    hf_to_mm(hf_dir, tmp_path / "mm", dtype="bf16")
    _, mm = load_mm(tmp_path / "mm")
    bias = mm[MM + "router.e_score_correction_bias"]
    assert bias.dtype == np.float32 and np.abs(bias).max() > 0.01
    np.testing.assert_array_equal(bias, hf_tensors(hf_dir)[LAYER + "gate.e_score_correction_bias"])
    assert str(mm[MM + "router.weight"].dtype) == "bfloat16"
    mm_to_hf(tmp_path / "mm", tmp_path / "hf_out")
    assert load_file(str(tmp_path / "hf_out" / "model.safetensors"))[LAYER + "gate.e_score_correction_bias"].dtype \
        == np.float32


def test_an_mtp_layer_is_skipped_with_a_note(tiny_hf, tmp_path, capsys):
    import shutil

    src = tmp_path / "with_mtp"
    shutil.copytree(tiny_hf("glm4v_moe"), src)
    weights = load_file(str(src / "model.safetensors"))
    extra = {"model.language_model.layers.3.eh_proj.weight": np.ones((64, 128), np.float32),
             "model.language_model.layers.3.mlp.experts.0.gate_proj.weight": np.ones((24, 64), np.float32)}
    save_file({**weights, **extra}, str(src / "model.safetensors"), {"format": "pt"})
    hf_to_mm(src, tmp_path / "mm")
    err = capsys.readouterr().err
    assert "skipping 2 tensors" in err and "LLM layer 3 is past num_hidden_layers 3" in err
    mm_to_hf(tmp_path / "mm", tmp_path / "hf_out")
    assert_same_tensors(hf_tensors(tmp_path / "hf_out"), weights)     # the MTP layer is not written back
