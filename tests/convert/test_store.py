"""load_mm / save_mm: stage subsets that match the models' stage parameters, atomic writes, iteration naming."""
import json
import os

import numpy as np
import pytest

from convert_helpers import assert_same_tensors
from mmx import models, nn
from mmx.checkpoint import Layout, load_mm, save_mm
from mmx.checkpoint.store import LATEST_FILE, META_FILE, MMSource, write_layout
from mmx.convert.drivers import hf_to_mm
from mmx.parallel import Stage


@pytest.mark.parametrize("family,tied,vit,llm", [("qwen2_5_vl", True, "2,1,0", "0,1,1"),
                                                 ("qwen2_vl", False, "2,0", "1,1"),
                                                 ("qwen2_vl", True, "1,1,0", "0,1,1")])
def test_stage_model_holds_exactly_its_shard(tiny_hf, tmp_path, family, tied, vit, llm):
    hf_dir = tiny_hf(family, tied)
    hf_to_mm(hf_dir, tmp_path / "mm", tp_size=2, vit_pp_layers=vit, llm_pp_layers=llm)
    metadata, full = load_mm(tmp_path / "mm")
    stages = Layout.from_dict(metadata["parallel"]).stages()
    seen = set()
    for stage in stages:
        _, tensors = load_mm(tmp_path / "mm", stage=stage)
        model = models.build(hf_dir, stage=stage)
        assert sorted(name for name, _ in nn.named_parameters(model)) == sorted(tensors)
        models.load_mm_state(model, tensors)   # strict: every parameter filled, every tensor used
        seen |= set(tensors)
    assert seen - set(full) == ({"text_decoder.output_layer.weight"} if tied else set())
    assert set(full) <= seen
    if tied:   # the last stage's output layer is a copy of the first stage's embedding
        _, last = load_mm(tmp_path / "mm", stage=stages[-1])
        assert last["text_decoder.output_layer.weight"].tobytes() == \
            full["text_decoder.embedding.word_embeddings.weight"].tobytes()


def test_save_mm_writes_iterations_atomically(tiny_hf, tmp_path):
    hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm")
    metadata, tensors = load_mm(tmp_path / "mm")
    layout = Layout.build(metadata["model"], MMSource(tmp_path / "mm").plan, tp_size=2, vit_pp_layers="2,0",
                          llm_pp_layers="1,1")
    changed = {name: array + np.float32(1) for name, array in tensors.items()}
    final = save_mm(tmp_path / "mm", 100, changed, {**metadata, "backend": "torch"}, layout)
    assert final.name == "iter_0000100"
    assert (tmp_path / "mm" / LATEST_FILE).read_text().strip() == "100"
    saved = json.loads((final / META_FILE).read_text())
    assert saved["iteration"] == 100 and saved["backend"] == "torch" and saved["parallel"]["tp_size"] == 2
    assert_same_tensors(load_mm(tmp_path / "mm")[1], changed)
    assert_same_tensors(load_mm(tmp_path / "mm", iteration="release")[1], tensors)

    class Failing:   # a source that dies halfway: the published checkpoint must stay the previous one
        entries = MMSource(tmp_path / "mm").entries

        def read(self, name):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_layout(Failing(), tmp_path / "mm", 200, layout, MMSource(tmp_path / "mm").plan, saved)
    assert (tmp_path / "mm" / LATEST_FILE).read_text().strip() == "100"
    assert not (tmp_path / "mm" / "iter_0000200").exists()
    assert {"iter_0000100", "release"} <= set(os.listdir(tmp_path / "mm"))
    assert not [name for name in os.listdir(tmp_path / "mm") if name.startswith(".")]   # no temporary left
    assert_same_tensors(load_mm(tmp_path / "mm")[1], changed)


def test_load_mm_names_missing_rank_files(tiny_hf, tmp_path):
    hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm", tp_size=2)
    os.remove(tmp_path / "mm" / "release" / "mp_rank_01" / "model.safetensors")
    with pytest.raises(ValueError, match=r"mp_rank_01/model.safetensors is missing: the metadata's layout .* needs "
                                         r"a file for tp rank 1, pp stage 0"):
        load_mm(tmp_path / "mm")
    with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt not found"):
        load_mm(tmp_path / "nothing")


def test_whole_model_stage_is_the_full_set(tiny_hf, tmp_path):
    hf_to_mm(tiny_hf("qwen2_5_vl"), tmp_path / "mm", vit_pp_layers="3,0", llm_pp_layers="1,1")
    metadata, full = load_mm(tmp_path / "mm")
    _, staged = load_mm(tmp_path / "mm", stage=Stage.full(3, 2))
    assert_same_tensors(staged, full)
