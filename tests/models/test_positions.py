"""Host-side integer metadata against transformers' own functions: 3-D rope index, vision windows, packed loss."""
import numpy as np
import pytest

from mmx import models, reference
from mmx.models.common.loss import IGNORE_INDEX, shift_labels
from mmx.models.common.positions import (rope_index, token_types, vision_bicubic_interpolation, vision_cu_seqlens,
                                         vision_interpolation, vision_position_ids, vision_window_index)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_rope_index_matches_transformers(checkpoint, family, padding_side):
    import torch

    ckpt = checkpoint(family, False)
    inputs = reference.build_inputs(ckpt.hf_dir, padding_side=padding_side)
    hf = reference._hf_model(ckpt.hf_dir).model
    kwargs = {key: torch.from_numpy(inputs[key]) for key in ("attention_mask", "image_grid_thw", "video_grid_thw",
                                                              "second_per_grid_ts") if key in inputs}
    token_type = torch.from_numpy(inputs["mm_token_type_ids"])       # the processor's own
    want, deltas = hf.get_rope_index(torch.from_numpy(inputs["input_ids"]), mm_token_type_ids=token_type, **kwargs)
    config = models.config_from_hf(ckpt.hf_dir)
    # what the data pipeline derives from the ids is exactly what the processor marks
    np.testing.assert_array_equal(token_types(inputs["input_ids"], config), inputs["mm_token_type_ids"])
    for given in (None, inputs["mm_token_type_ids"]):
        got, next_position = rope_index(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"],
                                        inputs["video_grid_thw"], config, inputs.get("second_per_grid_ts"),
                                        mm_token_type_ids=given)
        np.testing.assert_array_equal(got, want.numpy())
    real = inputs["attention_mask"].sum(-1)
    np.testing.assert_array_equal(next_position[:, 0], deltas.numpy()[:, 0] + real)   # HF: max + 1 - length
    # Qwen2.5-VL: the reference video's 2 temporal patches are 1 s apart, tokens_per_second = 2 positions;
    # Qwen2-VL: one position per temporal patch; Qwen3-VL: each temporal patch is its own run (a timestamp between),
    # at one temporal position, its run's start.
    video_tokens = inputs["mm_token_type_ids"] == 2          # GLM: <|image|> tokens inside the video span
    temporal = got[0][video_tokens]
    assert np.unique(temporal).size == 2
    if family not in ("qwen3_vl", "glm4v"):
        assert np.ptp(temporal) == (2 if family == "qwen2_5_vl" else 1)
    else:
        row = np.nonzero(video_tokens.any(-1))[0][0]
        video = np.nonzero(video_tokens[row])[0]
        runs = np.split(video, np.nonzero(np.diff(video) > 1)[0] + 1)
        assert len(runs) == 2 and all(np.unique(got[0, row, run]).size == 1 for run in runs)
        assert all(got[0, row, run[0]] == got[0, row, run[0] - 1] + 1 for run in runs)  # starts after the text


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
    # Qwen3-VL's learned-table resampling: bit-identical indices and float32 weights, tables smaller and larger
    for side in (3, 4, 48):
        want_taps, want_weights = vision_utils.get_vision_interpolation_indices_and_weights(
            torch.from_numpy(grid), side, mode="bilinear", align_corners=True, spatial_merge_size=2)
        taps, weights = vision_interpolation(grid, side, 2)
        np.testing.assert_array_equal(taps, want_taps.numpy())
        assert weights.dtype == np.float32 and (weights == want_weights.numpy()).all()


@pytest.mark.backend("torch")
def test_bicubic_position_table_matches_grid_sample():
    """GLM-4.1V's learned table resampled like transformers 5.23's Glm4vVisionEmbeddings (F.grid_sample bicubic,
    align_corners=False, border): per-tap weights equal grid_sample's own (read back through one-hot tables) and an
    N(0, 1) table resamples to within float32 rounding, for tables smaller, equal and larger than the grids."""
    import torch
    import torch.nn.functional as F

    grid = np.array([[1, 4, 6], [1, 4, 4], [1, 6, 8], [1, 2, 2], [1, 10, 14]])
    row, col = vision_position_ids(grid, 2).T
    sizes = np.repeat(grid[:, 1:], grid.prod(-1), axis=0)
    normalised = [((torch.from_numpy(c) + 0.5) / torch.from_numpy(s).float()) * 2 - 1
                  for c, s in ((col, sizes[:, 1]), (row, sizes[:, 0]))]
    points = torch.stack(normalised, dim=-1)[None, :, None]

    def resample(table, side):
        planes = table.view(side, side, -1).permute(2, 0, 1)[None]
        return F.grid_sample(planes, points, mode="bicubic", align_corners=False, padding_mode="border")[0, :, :, 0].T

    for side in (3, 4, 24):
        indices, weights = vision_bicubic_interpolation(grid, side, 2)
        assert indices.shape == weights.shape == (len(row), 16) and weights.dtype == np.float32
        dense = np.zeros((len(row), side * side), np.float32)
        np.add.at(dense, (np.arange(len(row))[:, None], indices), weights)
        assert np.abs(dense - resample(torch.eye(side * side), side).numpy()).max() <= 5e-7
        table = torch.randn(side * side, 8, generator=torch.Generator().manual_seed(side))
        got = (table.numpy()[indices] * weights[..., None]).sum(1)
        assert np.abs(got - resample(table, side).numpy()).max() <= 5e-6


def test_shift_labels_ignores_packed_sample_boundaries():
    labels = np.array([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(shift_labels(labels), [[2, 3, 4, 5, 6, IGNORE_INDEX]])
    np.testing.assert_array_equal(shift_labels(labels, [0, 2, 6]), [[2, IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX]])
