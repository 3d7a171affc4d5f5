"""Encoded samples → one numpy batch (the batch dict documented in :mod:`mmx.data`).

Padded batches (default): rows are right-padded to the longest sample (rounded up to ``pad_to_multiple_of``) with
the pad token, ``attention_mask`` 0 and ``labels`` -100. Pixel arrays of all samples are concatenated in batch order
with their grids, as the processor does for a batch.

Mixed batches: when no sample of a batch has an image or a video and ``ensure_vision`` is on, a dummy image (the
smallest image the processor makes) is appended after row 0's padding: its placeholder tokens get
``attention_mask`` 0 and ``labels`` -100, so no real token attends to it and the loss ignores it, but every rank
still runs the vision tower and its gradient all-reduce (a text-only rank would otherwise skip them and hang
distributed training). Its gradient is exactly zero.

Packed batches (``packing``): all samples of the batch go into ONE row (B = 1, as the model's packed path takes):
``cu_seqlens`` (N+1,) int32 marks the samples, ``position_ids`` (3, 1, T) restart at 0 in each sample (computed with
the model family's ``rope_index``; InternVL's are 1-D), and the model attends within each sample only, so packed
logits equal unpacked ones. A dummy image becomes its own final segment (labels -100).
"""
import importlib
import json
import os

import numpy as np

from mmx.data.processing import IGNORE_INDEX

VISION_KEYS = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))


def load_position_config(model_dir):
    """The model family's config (``mmx.models.<model_type>.config.from_hf``), which ``rope_index`` reads."""
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    try:
        family = importlib.import_module(f"mmx.models.{model_type}.config")
    except ImportError:
        from mmx.models import FAMILIES

        raise ValueError(f"{model_dir}/config.json: model_type {model_type!r} has no mmx model family, so packed "
                         f"position ids cannot be computed; packing supports {', '.join(FAMILIES)}") from None
    return family.from_hf(model_dir)


class Collator:
    """``collator(samples) → batch dict``; built from a :class:`mmx.data.processing.Preprocessor`."""

    def __init__(self, preprocessor, packing=None, ensure_vision=None, pad_to_multiple_of=None):
        config = preprocessor.config
        self.preprocessor = preprocessor
        self.pad_token_id = preprocessor.pad_token_id
        self.packing = config.packing if packing is None else packing
        self.ensure_vision = config.ensure_vision if ensure_vision is None else ensure_vision
        self.multiple = max(1, config.pad_to_multiple_of if pad_to_multiple_of is None else pad_to_multiple_of)
        self.position_config = load_position_config(config.model_name_or_path) if self.packing else None

    def __call__(self, samples):
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        samples = list(samples)
        needs_dummy = self.ensure_vision and not any("pixel_values" in s or "pixel_values_videos" in s
                                                      for s in samples)
        batch = self._packed(samples, needs_dummy) if self.packing else self._padded(samples, needs_dummy)
        batch["sample_ids"] = np.asarray([s["id"] for s in samples])
        return batch

    # -- padded --------------------------------------------------------------------------------------------------

    def _padded(self, samples, needs_dummy):
        lengths = [len(s["input_ids"]) for s in samples]
        dummy_ids = self.preprocessor.dummy_image()[0] if needs_dummy else np.zeros(0, np.int64)
        width = _round_up(max(lengths[0] + len(dummy_ids), max(lengths)), self.multiple)
        input_ids = np.full((len(samples), width), self.pad_token_id, np.int64)
        labels = np.full((len(samples), width), IGNORE_INDEX, np.int64)
        attention_mask = np.zeros((len(samples), width), np.int64)
        for row, (sample, length) in enumerate(zip(samples, lengths)):
            input_ids[row, :length] = sample["input_ids"]
            labels[row, :length] = sample["labels"]
            attention_mask[row, :length] = 1
        if needs_dummy:
            input_ids[0, width - len(dummy_ids):] = dummy_ids
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        batch.update(self._vision(samples, needs_dummy))
        return batch

    # -- packed --------------------------------------------------------------------------------------------------

    def _packed(self, samples, needs_dummy):
        segments = [(s["input_ids"], s["labels"]) for s in samples]
        if needs_dummy:
            dummy_ids = self.preprocessor.dummy_image()[0]
            segments.append((dummy_ids, np.full_like(dummy_ids, IGNORE_INDEX)))
        total = sum(len(ids) for ids, _ in segments)
        pad = _round_up(total, self.multiple) - total
        if pad:   # padding is a segment of its own so it never joins a sample's attention
            segments.append((np.full(pad, self.pad_token_id, np.int64), np.full(pad, IGNORE_INDEX, np.int64)))
        cu_seqlens = np.zeros(len(segments) + 1, np.int32)
        cu_seqlens[1:] = np.cumsum([len(ids) for ids, _ in segments])
        input_ids = np.concatenate([ids for ids, _ in segments])[None]
        labels = np.concatenate([lab for _, lab in segments])[None]
        attention_mask = np.ones_like(input_ids)
        if pad:
            attention_mask[0, -pad:] = 0
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                 "cu_seqlens": cu_seqlens}
        batch.update(self._vision(samples, needs_dummy))
        from mmx.models.common.positions import rope_index

        batch["position_ids"], _ = rope_index(input_ids, None, batch.get("image_grid_thw"),
                                              batch.get("video_grid_thw"), self.position_config,
                                              batch.get("second_per_grid_ts"), cu_seqlens)
        return batch

    # -- pixels --------------------------------------------------------------------------------------------------

    def _vision(self, samples, needs_dummy):
        out = {}
        for pixels_key, grid_key in VISION_KEYS:
            pixels = [s[pixels_key] for s in samples if pixels_key in s]
            grids = [s[grid_key] for s in samples if grid_key in s]
            if pixels_key == "pixel_values" and needs_dummy:
                _, dummy_pixels, dummy_grid = self.preprocessor.dummy_image()
                pixels, grids = pixels + [dummy_pixels], grids + [dummy_grid]
            if pixels:
                out[pixels_key] = np.concatenate(pixels).astype(np.float32, copy=False)
            grids = [grid for grid in grids if grid is not None]       # tiles (InternVL) carry no grid
            if grids:
                out[grid_key] = np.concatenate(grids).astype(np.int64, copy=False)
        seconds = [s["second_per_grid_ts"] for s in samples if "second_per_grid_ts" in s]
        if seconds:
            out["second_per_grid_ts"] = np.concatenate(seconds).astype(np.float32, copy=False)
        return out


def _round_up(value, multiple):
    return -(-value // multiple) * multiple
