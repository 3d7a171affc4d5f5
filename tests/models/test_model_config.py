"""Reading Qwen-VL config.json files: the nested 5.x layout and the older flat hub layout give the same config."""
import json

import pytest

from mmx import models


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_legacy_flat_config_reads_the_same(checkpoint, family):
    nested = json.load(open(f"{checkpoint(family, False).hf_dir}/config.json"))
    text = dict(nested["text_config"])
    rope = text.pop("rope_parameters")
    flat = {key: value for key, value in nested.items() if key != "text_config"}
    flat.update(text, model_type=family, rope_theta=rope["rope_theta"],
                rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    assert models.config_from_hf(flat) == models.config_from_hf(nested)
    config = models.config_from_hf(nested)
    assert config.family == family and config.text.head_dim == 16 and config.text.mrope_section == (2, 3, 3)
    assert config.vision.out_hidden_size == config.text.hidden_size


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="model_type 'llava' is not supported"):
        models.config_from_hf({"model_type": "llava"})
    bad = {"model_type": "qwen2_vl", "image_token_id": 5, "video_token_id": 6,
           "text_config": {"vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                           "num_attention_heads": 4, "rope_parameters": {"mrope_section": [2, 2, 2]}}}
    with pytest.raises(ValueError, match=r"mrope_section \[2, 2, 2\] sums to 6 but head_dim/2 is 8"):
        models.config_from_hf(bad)
