"""Expert-parallel layouts of Qwen3-VL-MoE's stacked experts: HF → EP 2 (× TP 2) → EP 4 (× PP 2) → EP 1 → HF is
byte-identical; each EP rank holds its run of experts renumbered from 0 (metadata ``local_experts``) and every
non-expert tensor; an ep_size that does not divide the experts is refused before any tensor is read."""
import json

import pytest

from convert_helpers import assert_same_tensors, hf_tensors, truncate_weights
from mmx.checkpoint import LayoutError
from mmx.checkpoint.safetensors_io import load_file
from mmx.checkpoint.store import META_FILE
from mmx.convert.drivers import hf_to_mm, mm_to_hf, reshard

EXPERTS = "text_decoder.decoder.layers.1.mlp.experts.linear_fc1.weight"


def test_ep_round_trip_is_byte_identical(tiny_hf, tmp_path):
    hf_dir = tiny_hf("qwen3_vl_moe")
    ep2 = hf_to_mm(hf_dir, tmp_path / "ep2", ep_size=2, tp_size=2)
    ep4 = reshard(tmp_path / "ep2", tmp_path / "ep4", ep_size=4, vit_pp_layers="2,1", llm_pp_layers="0,2")
    reshard(tmp_path / "ep4", tmp_path / "ep1", ep_size=1)
    mm_to_hf(tmp_path / "ep1", tmp_path / "hf_out")
    assert_same_tensors(hf_tensors(tmp_path / "hf_out"), hf_tensors(hf_dir))
    # EP 2 x TP 2: mp_rank_{tp}_{ep}; ep rank 1 holds experts 2 and 3 of 4, whole under TP, numbered 0 and 1
    source = hf_tensors(hf_dir)["model.language_model.layers.1.mlp.experts.gate_up_proj"]
    for tp in (0, 1):
        for ep in (0, 1):
            held = load_file(ep2 / f"mp_rank_{tp:02d}_{ep:03d}" / "model.safetensors")
            assert held[EXPERTS].tobytes() == source[2 * ep:2 * ep + 2].tobytes()
            assert "text_decoder.decoder.layers.1.mlp.router.weight" in held      # non-expert tensors everywhere
    assert json.loads((ep2 / META_FILE).read_text())["local_experts"] == [[0, 1], [2, 3]]
    metadata = json.loads((ep4 / META_FILE).read_text())
    assert metadata["local_experts"] == [[0], [1], [2], [3]] and metadata["parallel"]["ep_size"] == 4
    assert sorted(p.name for p in ep4.iterdir() if p.is_dir()) == [f"mp_rank_00_{pp:03d}_{ep:03d}"
                                                                   for pp in (0, 1) for ep in range(4)]
    last_stage = load_file(ep4 / "mp_rank_00_001_002" / "model.safetensors")
    assert last_stage[EXPERTS].shape == (1, 64, 48) and last_stage[EXPERTS].tobytes() == source[2:3].tobytes()


@pytest.mark.parametrize("ep_size", [3, 8])
def test_ep_size_must_divide_the_experts(tiny_hf, tmp_path, ep_size):
    truncated = truncate_weights(tiny_hf("qwen3_vl_moe"), tmp_path / "truncated")
    with pytest.raises(LayoutError, match=f"ep_size {ep_size} does not divide the number of experts \\(4\\): "
                                          f"choose an ep_size that divides 4"):
        hf_to_mm(truncated, tmp_path / "mm", ep_size=ep_size)
    assert not (tmp_path / "mm").exists()
