"""`mmx verify` on checkpoints of other sizes, head counts and mrope sections (converted by the convert helper's
hf_to_mm; the Qwen2.5-VL one into a TP=2 x PP=2 layout, which verify reads back whole)."""
import re

import pytest
from click.testing import CliRunner

from mmx.cli import main
from tolerances import MODEL_LOGITS_ATOL

from model_helpers import Checkpoint

OTHER_SHAPES = {
    # 8 query heads over 1 KV head (head_dim 8), mrope [1, 1, 2], 3 LLM layers, wider vision MLP
    "qwen2_vl": dict(text_num_attention_heads=8, text_num_key_value_heads=1, text_num_hidden_layers=3,
                     mrope_section=[1, 1, 2], vision_mlp_ratio=3, vision_num_heads=4),
    # MHA (4/4 heads), mrope [4, 2, 2], 4 vision blocks with full attention in blocks 0 and 3
    "qwen2_5_vl": dict(text_num_key_value_heads=4, mrope_section=[4, 2, 2], vision_depth=4,
                       vision_fullatt_block_indexes=[0, 3], vision_num_heads=4, text_hidden_size=64),
    # 3 deepstack levels into 3 of 4 LLM layers, GQA 8/2 with head_dim 16 (8 x 16 != 64), a 2x2 position table,
    # interleaved sections [4, 2, 2]
    "qwen3_vl": dict(vision_depth=4, vision_deepstack_visual_indexes=[0, 2, 3], vision_num_position_embeddings=4,
                     text_num_hidden_layers=4, text_num_attention_heads=8, text_head_dim=16, mrope_section=[4, 2, 2]),
    # 8 experts top-3, dense layers 0 and 2 of 4, experts in transformers' orientation (E, out, in)
    "qwen3_vl_moe": dict(text_num_experts=8, text_num_experts_per_tok=3, text_num_hidden_layers=4,
                         text_mlp_only_layers=[0, 2], expert_layout="transformers"),
    # hidden 96 with head_dim 24 of which 3/4 rotate (sections [3, 3, 3]), 3 LLM layers, 3 vision blocks of 4 heads,
    # a 4x4 position table (the small image's own grid: bicubic at the cell centres) and merger width 80
    "glm4v": dict(text_hidden_size=96, text_num_hidden_layers=3, partial_rotary_factor=0.75, mrope_section=[3, 3, 3],
                  vision_depth=3, vision_num_heads=4, vision_image_size=56, vision_intermediate_size=80),
    # 4 routed experts in 2 groups of which 1 is kept, top-2 without renormalising, routed_scaling_factor 2.5, a
    # shared expert twice the expert width, layers 0-1 dense of 4
    "glm4v_moe": dict(text_n_routed_experts=4, text_n_group=2, text_topk_group=1, text_norm_topk_prob=False,
                      text_routed_scaling_factor=2.5, text_n_shared_experts=2, text_num_hidden_layers=4,
                      text_first_k_dense_replace=2),
}


LAYOUTS = {"qwen2_vl": None, "qwen2_5_vl": dict(tp_size=2, vit_pp_layers="4,0", llm_pp_layers="1,1"),
           "qwen3_vl": dict(tp_size=2, vit_pp_layers="4,0", llm_pp_layers="3,1"),
           "qwen3_vl_moe": dict(tp_size=2, vit_pp_layers="3,0", llm_pp_layers="2,2"),
           "glm4v": dict(tp_size=2, vit_pp_layers="3,0", llm_pp_layers="1,2"),
           "glm4v_moe": dict(tp_size=2, ep_size=2, vit_pp_layers="2,0", llm_pp_layers="2,2")}


@pytest.mark.parametrize("family", sorted(OTHER_SHAPES))
def test_verify_passes_then_fails_below_the_error(family, tmp_path):
    """Passes at the default atol; rerun (one family, to keep MindSpore's CPU time down) with an atol below the
    measured error, it exits 1 and still ends with the same max_abs_diff line."""
    ckpt = Checkpoint(tmp_path, family, tied=family != "qwen2_5_vl", layout=LAYOUTS[family], seed=7,
                      **OTHER_SHAPES[family])
    result = CliRunner().invoke(main, ["verify", "--hf-dir", ckpt.hf_dir, "--mm-dir", ckpt.mm_dir])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.strip().splitlines() if "max_abs_diff=" in line]
    assert [line.split()[0] for line in lines[:5]] == ["image_large", "image_small", "video", "text", "batch"]
    worst = float(re.fullmatch(r"max_abs_diff=(\S+)", lines[-1]).group(1))
    assert 0 < worst <= MODEL_LOGITS_ATOL
    if family != "qwen2_5_vl":
        return
    strict = CliRunner().invoke(main, ["verify", "--hf-dir", ckpt.hf_dir, "--mm-dir", ckpt.mm_dir,
                                       "--atol", str(worst / 2)])
    assert strict.exit_code == 1
    assert strict.output.strip().splitlines()[-1] == lines[-1]
