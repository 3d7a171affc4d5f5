"""Batches: a mixed batch (2 image sizes + videos + text-only), the dummy image, and packed == unpacked logits."""
import numpy as np
import pytest

from data_helpers import data_config
from mmx import ops
from mmx.data.collate import Collator
from mmx.data.dataset import build_dataset
from mmx.data.processing import IGNORE_INDEX, Preprocessor
from tolerances import FORWARD

ORDER = ["small", "wide", "frames", "text", "mp4"]


_encoded, _models = {}, {}


def _encode(model_dirs, mixed_dir, family):
    """(Preprocessor, {sample id: encoded sample}) of the mixed set under ``family``'s processor, built once."""
    if family not in _encoded:
        config = data_config(model_dirs[family], str(mixed_dir / "data.json"))
        pre = Preprocessor(config)
        dataset = build_dataset(config, pre)
        samples = {dataset[i]["id"]: dataset[i] for i in range(len(dataset))}
        assert list(samples) == ORDER
        _encoded[family] = pre, samples
    return _encoded[family]


def _model(model_dirs, tmp_path_factory, family):
    """The family's model with the tiny checkpoint's random weights (converted by mmx.convert), built once."""
    from mmx import models
    from mmx.checkpoint.store import load_mm
    from mmx.convert.drivers import hf_to_mm

    if family not in _models:
        mm_dir = str(tmp_path_factory.mktemp("mm") / "mm")
        hf_to_mm(model_dirs[family], mm_dir)
        _models[family] = models.load_mm_state(models.build(model_dirs[family]), load_mm(mm_dir)[1])
    return _models[family]


@pytest.fixture(scope="module")
def encoded(model_dirs, mixed_dir):
    return _encode(model_dirs, mixed_dir, "qwen2_5_vl")


def test_mixed_batch(encoded):
    pre, samples = encoded
    batch = Collator(pre)([samples[name] for name in ORDER])
    lengths = [len(samples[name]["input_ids"]) for name in ORDER]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, max(lengths))
    assert batch["input_ids"].dtype == np.int64 and batch["labels"].dtype == np.int64
    assert batch["attention_mask"].sum(axis=1).tolist() == lengths
    for row, name in enumerate(ORDER):
        np.testing.assert_array_equal(batch["input_ids"][row, :lengths[row]], samples[name]["input_ids"])
        assert (batch["input_ids"][row, lengths[row]:] == pre.pad_token_id).all()
        assert (batch["labels"][row, lengths[row]:] == IGNORE_INDEX).all()
    # images: small (56x56 → 4x4 patches) then wide (60x90 → 4x6), concatenated in row order
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]]
    np.testing.assert_array_equal(batch["pixel_values"], np.concatenate([samples["small"]["pixel_values"],
                                                                         samples["wide"]["pixel_values"]]))
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 4]]
    assert batch["pixel_values_videos"].shape == (64, 1176)
    assert batch["second_per_grid_ts"].shape == (2,)
    assert batch["sample_ids"].tolist() == ORDER
    # every placeholder has its features: the model's masked_scatter count check
    assert int((batch["input_ids"] == pre.image_token_id).sum()) == int(batch["image_grid_thw"].prod(1).sum()) // 4
    assert int((batch["input_ids"] == pre.video_token_id).sum()) == int(batch["video_grid_thw"].prod(1).sum()) // 4


def test_text_only_batch_gets_a_masked_dummy_image(encoded):
    pre, samples = encoded
    batch = Collator(pre, pad_to_multiple_of=8)([samples["text"], samples["text"]])
    length = len(samples["text"]["input_ids"])
    dummy_ids, dummy_pixels, dummy_grid = pre.dummy_image()
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= length + len(dummy_ids)
    np.testing.assert_array_equal(batch["input_ids"][0, -len(dummy_ids):], dummy_ids)
    assert batch["attention_mask"][0].sum() == length and batch["attention_mask"][1].sum() == length
    assert (batch["labels"][:, length:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(batch["pixel_values"], dummy_pixels)
    np.testing.assert_array_equal(batch["image_grid_thw"], dummy_grid)
    assert "pixel_values" not in Collator(pre, ensure_vision=False)([samples["text"]])


def _logits(model, batch):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
            "video_grid_thw", "second_per_grid_ts", "position_ids", "cu_seqlens")
    inputs = {k: (ops.tensor(batch[k]) if k in ("input_ids", "attention_mask", "pixel_values",
                                                "pixel_values_videos") else batch[k])
              for k in keys if k in batch}
    return ops.to_numpy(model(**inputs)).astype(np.float64)


def _error(got, want):
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "glm4v", "internvl"])
def test_packed_logits_equal_unpacked(model_dirs, mixed_dir, tmp_path_factory, family):
    pre, samples = _encode(model_dirs, mixed_dir, family)
    model = _model(model_dirs, tmp_path_factory, family)
    names = ["small", "wide", "frames", "text"]
    packed = Collator(pre, packing=True)([samples[n] for n in names])
    lengths = [len(samples[n]["input_ids"]) for n in names]
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert packed["position_ids"].shape == (3, 1, sum(lengths))
    assert packed["position_ids"][:, 0, packed["cu_seqlens"][:-1]].tolist() == [[0] * 4] * 3  # restart per sample
    logits = _logits(model, packed)
    assert logits.std() > 0.1
    padded = _logits(model, Collator(pre)([samples[n] for n in names]))
    for i, (start, length) in enumerate(zip(packed["cu_seqlens"][:-1], lengths)):
        assert _error(logits[0, start:start + length], padded[i, :length]) <= FORWARD["float32"], names[i]
    # and against the image sample run on its own (B = 1, no padding at all)
    alone = _logits(model, Collator(pre, ensure_vision=False)([samples["wide"]]))
    start, length = packed["cu_seqlens"][1], lengths[1]
    assert _error(logits[0, start:start + length], alone[0]) <= FORWARD["float32"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "glm4v", "internvl"])
def test_dummy_image_changes_no_logit(model_dirs, mixed_dir, tmp_path_factory, family):
    """A text-only row gets a masked dummy image (so every rank's vision tower runs); with Qwen3-VL its deepstack
    features land on the masked positions only."""
    pre, samples = _encode(model_dirs, mixed_dir, family)
    model = _model(model_dirs, tmp_path_factory, family)
    with_dummy = _logits(model, Collator(pre)([samples["text"]]))
    without = _logits(model, Collator(pre, ensure_vision=False)([samples["text"]]))
    length = without.shape[1]
    assert _error(with_dummy[0, :length], without[0]) <= FORWARD["float32"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "internvl"])
def test_packed_positions_are_each_samples_own(model_dirs, mixed_dir, family):
    """Each packed segment's 3-D positions equal the family's rope_index of that sample alone."""
    from mmx.data.collate import load_position_config
    from mmx.models.common.positions import rope_index

    config = data_config(model_dirs[family], str(mixed_dir / "data.json"))
    pre = Preprocessor(config)
    dataset = build_dataset(config, pre)
    samples = [dataset[i] for i in range(len(dataset))]
    packed = Collator(pre, packing=True, pad_to_multiple_of=16)(samples)
    bounds = packed["cu_seqlens"]
    assert bounds[-1] % 16 == 0 and len(bounds) == len(samples) + 2          # + the padding segment
    assert packed["attention_mask"][0, bounds[-2]:].sum() == 0
    position_config = load_position_config(model_dirs[family])
    for i, sample in enumerate(samples):
        alone, _ = rope_index(sample["input_ids"][None], None, sample.get("image_grid_thw"),
                              sample.get("video_grid_thw"), position_config, sample.get("second_per_grid_ts"))
        np.testing.assert_array_equal(packed["position_ids"][:, :, bounds[i]:bounds[i + 1]], alone)


def test_internvl_tiles_batch_and_dummy_tile(model_dirs, mixed_dir):
    """InternVL: every image's tiles (the 60x90 one: 2 + thumbnail) and every video frame (one tile each) go into
    one pixel_values in row order, with no grids; a text-only batch gets one masked dummy tile wrapped in
    <img> ... </img>, and packing gives each sample 1-D positions 0..n-1."""
    pre, samples = _encode(model_dirs, mixed_dir, "internvl")
    batch = Collator(pre)([samples[name] for name in ORDER])
    assert "image_grid_thw" not in batch and "pixel_values_videos" not in batch
    tiles = [len(samples[name].get("pixel_values", ())) for name in ORDER]
    assert tiles == [1, 3, 4, 0, 4]
    np.testing.assert_array_equal(batch["pixel_values"], np.concatenate([samples[n]["pixel_values"]
                                                                         for n in ORDER if n != "text"]))
    assert batch["pixel_values"].shape == (12, 3, 56, 56)
    assert int((batch["input_ids"] == pre.image_token_id).sum()) == 12 * pre.processor.image_seq_length
    dummy_ids, dummy_pixels, dummy_grid = pre.dummy_image()
    vocab = pre.tokenizer.get_vocab()
    assert dummy_grid is None and dummy_pixels.shape == (1, 3, 56, 56)
    assert dummy_ids.tolist() == [vocab["<img>"]] + [pre.image_token_id] * 4 + [vocab["</img>"]]
    text = Collator(pre)([samples["text"]])
    np.testing.assert_array_equal(text["input_ids"][0, -len(dummy_ids):], dummy_ids)
    assert text["attention_mask"][0, -len(dummy_ids):].sum() == 0 and "image_grid_thw" not in text
    packed = Collator(pre, packing=True)([samples[name] for name in ORDER])
    for start, end in zip(packed["cu_seqlens"][:-1], packed["cu_seqlens"][1:]):
        assert packed["position_ids"][:, 0, start:end].tolist() == [list(range(end - start))] * 3
