"""The data config: the guides' nested data.json and a flat mmx section read by one loader."""
import json

import pytest

from mmx.data.config import load_data_config


def test_guides_data_json(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.json", "b.json"):
        (tmp_path / "data" / name).write_text("[]")
    config = {
        "dataset_param": {
            "dataset_type": "huggingface",
            "preprocess_parameters": {"model_name_or_path": "./ckpt/hf", "image_max_pixels": 262144,
                                      "image_min_pixels": 3136, "video_fps": 1, "video_maxlen": 8},
            "basic_parameters": {"template": "qwen2vl", "dataset_dir": "./data",
                                 "dataset": "./data/a.json,./data/b.json", "cache_dir": "./data/cache_dir",
                                 "max_samples": 10, "cutoff_len": 2048, "train_on_prompt": False,
                                 "mask_history": True, "streaming": True, "preprocessing_num_workers": 2},
        },
        "dataloader_param": {"sampler_type": "stateful_distributed_sampler", "shuffle": False},
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(config))
    cfg = load_data_config(str(path), base_dir=str(tmp_path))
    assert cfg.dataset == (str(tmp_path / "data" / "a.json"), str(tmp_path / "data" / "b.json"))
    assert cfg.model_name_or_path == str(tmp_path / "ckpt" / "hf")
    assert cfg.cache_dir == str(tmp_path / "data" / "cache_dir")
    assert (cfg.max_samples, cfg.cutoff_len, cfg.mask_history, cfg.streaming) == (10, 2048, True, True)
    assert (cfg.image_max_pixels, cfg.image_min_pixels, cfg.video_fps, cfg.video_maxlen) == (262144, 3136, 1.0, 8)
    assert cfg.preprocessing_num_workers == 2 and cfg.shuffle is False
    assert "dataset_param.basic_parameters.template" in cfg.ignored
    assert "dataloader_param.sampler_type" in cfg.ignored


def test_flat_yaml_and_dataset_relative_to_dataset_dir(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "train.jsonl").write_text("")
    path = tmp_path / "data.yaml"
    path.write_text("dataset_dir: media\ndataset: [train.jsonl]\ncutoff_len: 64\nskip_bad_samples: true\n")
    cfg = load_data_config(str(path), base_dir=str(tmp_path))
    assert cfg.dataset == (str(tmp_path / "media" / "train.jsonl"),)
    assert cfg.cutoff_len == 64 and cfg.skip_bad_samples is True


@pytest.mark.parametrize("raw, pattern", [
    ({"dataset": "a.json", "cutof_len": 5}, r"unknown key 'cutof_len' \(did you mean 'cutoff_len'\?\)"),
    ({"dataset": ""}, "dataset is empty"),
    ({"dataset": "a.json", "cutoff_len": -1}, "cutoff_len must be a non-negative integer"),
    ({"dataset": "a.json", "streaming": "yes"}, "streaming must be true or false"),
    ({"dataset": "a.json", "attr": {"bogus": 1}}, r"unknown attr key\(s\) \['bogus'\]"),
])
def test_bad_keys_are_named(raw, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_data_config(raw)


def test_finetune_config_data_section_defaults_to_the_model_dir(tmp_path):
    path = tmp_path / "finetune.yaml"
    path.write_text("model:\n  init_from_hf_path: ckpt/mm\ndata:\n  dataset: d.json\n  cutoff_len: 256\n"
                    "training:\n  lr: 1.0e-5\n")
    cfg = load_data_config(str(path), base_dir=str(tmp_path))
    assert cfg.model_name_or_path == str(tmp_path / "ckpt" / "mm") and cfg.cutoff_len == 256
