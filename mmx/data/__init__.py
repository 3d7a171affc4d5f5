"""mmx.data — conversation datasets → numpy batches (framework-free; the trainer converts with ``mmx.ops.tensor``).

Pipeline::

    data.json / flat YAML ─ config.load_data_config ─► DataConfig           (the one place that reads data keys)
    dataset files ─ formats.load_samples ─► samples                         (mllm conversations or messages + attr)
    sample ─ processing.Preprocessor.encode ─► encoded sample                (AutoProcessor + chat template)
    [encoded] ─ dataset.build_dataset ─► EncodedDataset (len, [i])           (cache.py: cache_dir entries)
    streaming: streaming.StreamingLoader ─► batches, resumable state
    [encoded] ─ collate.Collator ─► batch dict

The batch dict (numpy arrays; B rows, S tokens; packed batches have B = 1 and T tokens)::

    input_ids           (B, S) int64   chat-template tokens with each image/video placeholder expanded
    attention_mask      (B, S) int64   1 = real token, 0 = padding (and a mixed batch's dummy image tokens)
    labels              (B, S) int64   = input_ids on supervised tokens, -100 elsewhere; NOT shifted (HF
                                       convention: the loss compares logits[:, s] with labels[:, s + 1])
    pixel_values        (P, C*2*14*14) float32, all images of the batch in row order (absent: no image)
    image_grid_thw      (N_images, 3) int64   (t, h, w) patches per image
    pixel_values_videos (P_v, C*2*14*14) float32 (absent: no video)
    video_grid_thw      (N_videos, 3) int64
    second_per_grid_ts  (N_videos,) float32   seconds per temporal grid step (Qwen2.5-VL video positions)
    position_ids        (3, 1, T) int64   packed only: per-sample 3-D mRoPE positions (restart at 0 per sample)
    cu_seqlens          (N+1,) int32      packed only: sample boundaries in the row, starting at 0
    sample_ids          (B,) or (N,) str  the ``id`` of each sample in the batch, for error messages

Mixed batches: a batch without any image or video gets a dummy image (attention 0 / labels -100) so every rank runs
the vision tower (see :mod:`mmx.data.collate`).

Typical use::

    from mmx.data import build
    pipeline = build("data.json")             # or a dict / flat YAML; see config.KEYS
    batch = pipeline.collate([pipeline.dataset[i] for i in range(4)])
"""
from dataclasses import dataclass

from mmx.data.collate import Collator
from mmx.data.config import DataConfig, load_data_config
from mmx.data.dataset import EncodedDataset, build_dataset
from mmx.data.errors import DataError
from mmx.data.processing import IGNORE_INDEX, Preprocessor
from mmx.data.streaming import StreamingLoader

__all__ = ["build", "Pipeline", "DataConfig", "load_data_config", "Preprocessor", "Collator", "EncodedDataset",
           "build_dataset", "StreamingLoader", "DataError", "IGNORE_INDEX"]


@dataclass
class Pipeline:
    """What the trainer needs: ``dataset`` (map-style; None when streaming), ``collate`` and the ``config``."""

    config: DataConfig
    preprocessor: Preprocessor
    collate: Collator
    dataset: EncodedDataset = None

    def streaming_loader(self, batch_size, rank=0, world_size=1):
        """A resumable :class:`StreamingLoader` of this rank (``streaming: true``)."""
        return StreamingLoader(self.config, self.preprocessor, self.collate, batch_size, rank, world_size)


def build(config, base_dir=None, **overrides):
    """A :class:`Pipeline` from a data config (path or dict); the map-style dataset is built unless streaming."""
    config = config if isinstance(config, DataConfig) else load_data_config(config, base_dir, **overrides)
    preprocessor = Preprocessor(config)
    collate = Collator(preprocessor)
    dataset = None if config.streaming else build_dataset(config, preprocessor)
    return Pipeline(config, preprocessor, collate, dataset)
