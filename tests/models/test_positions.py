"""Host-side integer metadata against transformers' own functions: 3-D rope index, vision windows, packed loss."""
import numpy as np
import pytest

from mmx import models, reference
from mmx.models.common.loss import IGNORE_INDEX, shift_labels
from mmx.models.common.positions import rope_index, vision_cu_seqlens, vision_position_ids, vision_window_index


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_rope_index_matches_transformers(checkpoint, family, padding_side):
    import torch

    ckpt = checkpoint(family, False)
    inputs = reference.build_inputs(ckpt.hf_dir, padding_side=padding_side)
    hf = reference._hf_model(ckpt.hf_dir).model
    kwargs = {key: torch.from_numpy(inputs[key]) for key in ("attention_mask", "image_grid_thw", "video_grid_thw",
                                                              "second_per_grid_ts") if key in inputs}
    token_type = torch.from_numpy(reference._mm_token_type_ids(ckpt.hf_dir, inputs["input_ids"]))
    want, deltas = hf.get_rope_index(torch.from_numpy(inputs["input_ids"]), mm_token_type_ids=token_type, **kwargs)
    config = models.config_from_hf(ckpt.hf_dir)
    got, next_position = rope_index(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"],
                                    inputs["video_grid_thw"], config, inputs.get("second_per_grid_ts"))
    np.testing.assert_array_equal(got, want.numpy())
    real = inputs["attention_mask"].sum(-1)
    np.testing.assert_array_equal(next_position[:, 0], deltas.numpy()[:, 0] + real)   # HF: max + 1 - length
    # Qwen2.5-VL: the reference video's 2 temporal patches are 1 s apart, tokens_per_second = 2 positions;
    # Qwen2-VL: one position per temporal patch.
    temporal = got[0][inputs["input_ids"] == config.video_token_id]
    assert np.unique(temporal).size == 2 and np.ptp(temporal) == (2 if family == "qwen2_5_vl" else 1)


def test_vision_metadata_matches_transformers():
    import torch
    from transformers import vision_utils

    grid = np.array([[1, 4, 6], [2, 4, 4], [1, 6, 8]])
    want_index, want_cu = vision_utils.get_vision_window_index(torch.from_numpy(grid), 2, 56, 14)
    index, cu = vision_window_index(grid, 2, 56, 14)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_array_equal(cu, want_cu.numpy())
    assert len(cu) - 1 > 4      # windows really cut the frames
    np.testing.assert_array_equal(vision_position_ids(grid, 2),
                                  vision_utils.get_vision_position_ids(torch.from_numpy(grid), 2).numpy())
    np.testing.assert_array_equal(vision_cu_seqlens(grid), [0, 24, 40, 56, 104])


def test_shift_labels_ignores_packed_sample_boundaries():
    labels = np.array([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(shift_labels(labels), [[2, 3, 4, 5, 6, IGNORE_INDEX]])
    np.testing.assert_array_equal(shift_labels(labels, [0, 2, 6]), [[2, IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX]])
