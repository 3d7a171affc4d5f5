"""mmx.tiny checkpoints load through transformers' real from_pretrained paths, with nothing missing or extra."""
import hashlib

import numpy as np
import pytest

from mmx import models
from mmx.models.common.positions import vision_window_index
from mmx.tiny import TOKEN_ID, make_tiny_checkpoint

from model_helpers import VARIANTS


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_transformers_loads_every_weight(checkpoint, family, tied):
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(checkpoint(family, tied).hf_dir,
                                                              output_loading_info=True)
    assert {key: value for key, value in info.items() if value} == {}
    shares = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert shares == tied
    assert type(model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                                    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                    "qwen3_vl": "Qwen3VLForConditionalGeneration",
                                    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
                                    "glm4v": "Glm4vForConditionalGeneration",
                                    "glm4v_moe": "Glm4vMoeForConditionalGeneration"}[family]


def test_processor_template_and_tokens(checkpoint):
    from transformers import AutoProcessor, AutoTokenizer

    from mmx import reference

    hf_dir = checkpoint("qwen2_5_vl", False).hf_dir
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "Hi"}]}],
                                         add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for token, index in TOKEN_ID.items():
        assert tokenizer.convert_tokens_to_ids(token) == index
    assert tokenizer.decode(tokenizer("A cat sits on a mat.")["input_ids"]) == "A cat sits on a mat."
    inputs = reference.build_inputs(hf_dir)
    image_tokens = (inputs["input_ids"] == TOKEN_ID["<|image_pad|>"]).sum()
    assert image_tokens == inputs["image_grid_thw"].prod(-1).sum() // 4
    assert len({tuple(grid) for grid in inputs["image_grid_thw"].tolist()}) == 2    # two image sizes
    assert inputs["video_grid_thw"][0, 0] == 2                                       # two temporal patches
    # Qwen2.5-VL window attention is not trivial on these images: the large one is cut into several windows
    vision = models.config_from_hf(hf_dir).vision
    _, windows = vision_window_index(inputs["image_grid_thw"], vision.spatial_merge_size, vision.window_size,
                                     vision.patch_size)
    assert len(windows) - 1 > len(inputs["image_grid_thw"])


def test_qwen3_vl_fixture_exercises_every_branch(checkpoint):
    """The tiny Qwen3-VL covers what its parity must prove: resampled position table, 2 deepstack levels, head_dim
    != hidden / heads, a video of 2 timestamped frame groups (5.23 keeps the outer vision_start / vision_end),
    16-pixel patches on non-square images of two sizes, and the processor's mm_token_type_ids."""
    from transformers import AutoProcessor

    from mmx import reference

    hf_dir = checkpoint("qwen3_vl", False).hf_dir
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert [type(p).__name__ for p in (processor, processor.image_processor, processor.video_processor)] == [
        "Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLVideoProcessor"]
    config = models.config_from_hf(hf_dir)
    assert config.text.head_dim * config.text.num_heads != config.text.hidden_size and config.text.qk_norm
    assert config.text.mrope_interleaved and config.split_video_frames
    assert config.vision.depth >= 3 and len(config.vision.deepstack_visual_indexes) == 2
    inputs = reference.build_inputs(hf_dir)
    grids = inputs["image_grid_thw"].tolist()
    assert grids == [[1, 4, 6], [1, 4, 4]] and config.vision.num_position_embeddings == 9     # 3x3 table < grids
    assert inputs["pixel_values"].shape[1] == 3 * 2 * 16 * 16
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6]]
    text = processor.tokenizer.decode(inputs["input_ids"][2])
    assert ("<|vision_start|><0.2 seconds><|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|><1.2 seconds>"
            "<|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|><|vision_end|>") in text
    assert set(np.unique(inputs["mm_token_type_ids"])) == {0, 1, 2}


def test_glm4v_fixture_exercises_every_branch(checkpoint):
    """The tiny GLM-4.1V covers what its parity must prove: GLM's processor classes and hub chat template, a 3x3
    position table smaller than both non-square image grids (bicubic resampling), the 2-frame pixel budget, a video of
    2 frame groups as <|image|> runs with integer-second timestamps after each, partial GPT-J rotary with contiguous
    sections, sandwich norms, and the vision MLP as wide as out_hidden_size."""
    from transformers import AutoProcessor

    from mmx import reference
    from mmx.models.common.positions import token_types
    from mmx.tiny import GLM_TOKEN_ID

    hf_dir = checkpoint("glm4v", False).hf_dir
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert [type(p).__name__ for p in (processor, processor.image_processor, processor.video_processor)] == [
        "Glm4vProcessor", "Glm4vImageProcessor", "Glm4vVideoProcessor"]
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "Hi"}]}],
                                         add_generation_prompt=True)
    assert text == "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Hi<|assistant|>\n"
    config = models.config_from_hf(hf_dir)
    assert config.text.rotary_dim * 2 == config.text.head_dim and config.text.rotary_interleaved
    assert config.text.sandwich_norms and config.text.attention_bias and not config.text.mrope_interleaved
    assert config.vision.num_position_embeddings == 9 and config.vision.out_hidden_size != config.vision.hidden_size
    inputs = reference.build_inputs(hf_dir)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 4]]          # 60x90 and 56x56 under 2x56x84 px
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6]]
    frame = "<|begin_of_image|>" + "<|image|>" * 6 + "<|end_of_image|>"
    video_row = processor.tokenizer.decode(inputs["input_ids"][2])
    assert f"<|begin_of_video|>{frame}0{frame}1<|end_of_video|>" in video_row
    assert not (inputs["input_ids"] == config.video_token_id).any()             # frames use the image token
    assert config.image_token_id == GLM_TOKEN_ID["<|image|>"]
    np.testing.assert_array_equal(token_types(inputs["input_ids"], config), inputs["mm_token_type_ids"])
    assert set(np.unique(inputs["mm_token_type_ids"])) == {0, 1, 2}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    def digest(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    a = make_tiny_checkpoint(str(tmp_path / "a"), "qwen2_vl", seed=3)
    b = make_tiny_checkpoint(str(tmp_path / "b"), "qwen2_vl", seed=3)
    c = make_tiny_checkpoint(str(tmp_path / "c"), "qwen2_vl", seed=4)
    assert digest(f"{a}/model.safetensors") == digest(f"{b}/model.safetensors")
    assert digest(f"{a}/model.safetensors") != digest(f"{c}/model.safetensors")
    assert digest(f"{a}/tokenizer.json") == digest(f"{c}/tokenizer.json")


def test_bad_override_is_named(tmp_path):
    with pytest.raises(ValueError, match="mrope_section"):
        make_tiny_checkpoint(str(tmp_path), "qwen2_vl", mrope_section=[1, 1, 1])
    with pytest.raises(ValueError, match="unknown override 'depth'"):
        make_tiny_checkpoint(str(tmp_path), "qwen2_vl", depth=3)


def test_glm4v_moe_fixture_exercises_every_branch(checkpoint):
    """The tiny GLM-4.5V covers what its parity must prove: GLM's processor, an explicit head_dim (4 x 32 != 64) with
    half of it rotating in NeoX halves, no sandwich norms, layer 0 dense and layers 1-2 MoE (8 routed experts top-2,
    one shared expert), per-expert hub tensors and a non-zero float32 correction bias."""
    from transformers import AutoProcessor
    from safetensors.numpy import load_file

    hf_dir = checkpoint("glm4v_moe", False).hf_dir
    assert type(AutoProcessor.from_pretrained(hf_dir)).__name__ == "Glm4vProcessor"
    text = models.config_from_hf(hf_dir).text
    assert text.num_heads * text.head_dim != text.hidden_size and text.rotary_dim * 2 == text.head_dim
    assert not text.rotary_interleaved and not text.sandwich_norms and text.attention_bias
    assert text.moe_layers == (1, 2) and text.num_experts == 8 and text.num_experts_per_tok == 2
    assert text.moe_router == "sigmoid" and text.shared_expert_intermediate_size == text.moe_intermediate_size
    weights = load_file(f"{hf_dir}/model.safetensors")
    bias = weights["model.language_model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.dtype == np.float32 and np.abs(bias).min() > 0
    assert sum(".mlp.experts." in name for name in weights) == 2 * 8 * 3
