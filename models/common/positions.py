"""Integer metadata of Qwen-VL models, computed on the host with numpy (as transformers does on the host).

- :func:`rope_index` — the 3-D (temporal, height, width) position ids of the LLM tokens (HF ``get_rope_index`` in
  ``modeling_qwen2_vl.py`` / ``modeling_qwen2_5_vl.py``), per row or per packed sample.
- :func:`vision_position_ids`, :func:`vision_cu_seqlens`, :func:`vision_window_index`,
  :func:`vision_interpolation`, :func:`vision_bicubic_interpolation` — the vision tower's 2-D rotary positions,
  per-frame attention segments, Qwen2.5-VL's window reordering and the learned-position resampling of Qwen3-VL
  (bilinear) and GLM-4.1V (bicubic, as ``F.grid_sample``) (HF ``transformers/vision_utils.py``, ``modeling_glm4v.py``).

All take and return numpy arrays; nothing here touches a backend tensor.
"""
import itertools

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def _as_grid(grid_thw):
    return np.zeros((0, 3), np.int64) if grid_thw is None else np.asarray(grid_thw, np.int64).reshape(-1, 3)


def _vision_positions(start, grid_thw, spatial_merge_size, time_interval):
    """(3, t*h*w) positions of one image/video's merged tokens, offset by ``start`` (HF get_vision_position_ids)."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size
    # HF: (arange(t) * time_interval).long() in float32, truncating toward zero.
    temporal = (np.arange(t, dtype=np.float32) * np.float32(time_interval)).astype(np.int64) + start
    grid_t, grid_h, grid_w = np.meshgrid(temporal, np.arange(h) + start, np.arange(w) + start, indexing="ij")
    return np.stack([grid_t, grid_h, grid_w]).reshape(3, -1)


def _segment_positions(token_type, grids, spatial_merge_size, time_intervals):
    """(3, n) positions of one sample's tokens; consumes this sample's grids from the shared iterators."""
    pieces, current = [], 0
    for modality, group in itertools.groupby(token_type.tolist()):
        length = len(list(group))
        if modality == TEXT:
            pieces.append(np.broadcast_to(np.arange(length) + current, (3, length)))
            current += length
            continue
        try:
            grid = next(grids[modality])
        except StopIteration:
            kind = "image_grid_thw" if modality == IMAGE else "video_grid_thw"
            raise ValueError(f"the input ids hold more {'image' if modality == IMAGE else 'video'} groups than "
                             f"{kind} has rows; pass one grid row per image/video in order") from None
        interval = next(time_intervals) if modality == VIDEO else 1.0
        positions = _vision_positions(current, grid, spatial_merge_size, interval)
        if positions.shape[1] != length:
            raise ValueError(f"an {'image' if modality == IMAGE else 'video'} group has {length} placeholder tokens "
                             f"but its grid {grid.tolist()} gives {positions.shape[1]} merged tokens")
        pieces.append(positions)
        current += max(int(grid[1]), int(grid[2])) // spatial_merge_size
    return np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)


def token_types(input_ids, config):
    """(B, S) int64 modality of each token, 0 text / 1 image / 2 video: what transformers 5.23's processors return
    as ``mm_token_type_ids`` (``ProcessorMixin.create_mm_token_type_ids`` marks exactly the placeholder tokens).

    GLM (``config.video_span_token_ids`` = (begin, end) of video): video frames are image tokens, so an image token
    is video when more begin- than end-of-video tokens precede it in its row (``Glm4vProcessor``)."""
    input_ids = np.asarray(input_ids)
    image = input_ids == config.image_token_id
    spans = getattr(config, "video_span_token_ids", ())
    if spans:
        start, end = spans
        inside = np.cumsum(input_ids == start, axis=-1) > np.cumsum(input_ids == end, axis=-1)
        return np.where(image & inside, VIDEO, np.where(image, IMAGE, TEXT)).astype(np.int64)
    return np.where(image, IMAGE, np.where(input_ids == config.video_token_id, VIDEO, TEXT)).astype(np.int64)


def rope_index(input_ids, attention_mask, image_grid_thw, video_grid_thw, config, second_per_grid_ts=None,
               cu_seqlens=None, mm_token_type_ids=None):
    """3-D rotary position ids of the LLM tokens and, per row, the next free position (for decoding).

    input_ids (B, S) int; attention_mask (B, S) or None (1 = real token; padding gets position 0 like HF);
    image_grid_thw (N_img, 3), video_grid_thw (N_vid, 3) in the order the images/videos appear in the batch;
    ``config``: an object with ``image_token_id``, ``video_token_id``, ``spatial_merge_size``,
    ``tokens_per_second`` (``None`` for Qwen2-VL: video frames step by 1) and ``split_video_frames`` (Qwen3-VL:
    each temporal patch of a video is its own placeholder run, positioned like a one-frame grid); second_per_grid_ts
    (N_vid,) seconds per temporal grid step (Qwen2.5-VL). ``cu_seqlens`` (N+1,): the rows are packed, each segment
    is one sample whose positions start at 0. ``mm_token_type_ids`` (B, S): the processor's modality of each token
    (HF groups runs of it); default :func:`token_types` of the ids, which is what the processors compute.
    ``config.positions_1d`` (InternVL): every row is the index of the real token in its sample (HF: the attention
    mask's cumsum - 1, what generate passes), whatever the modality; no grids are read.
    → (position_ids (3, B, S) int64, next_position (B, N_segments) int64 = max position + 1 of each sample).
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    mask = np.ones((batch, length), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mm_token_type_ids is None:
        token_type = token_types(input_ids, config)
    else:
        token_type = np.asarray(mm_token_type_ids, np.int64)
        if token_type.shape != input_ids.shape:
            raise ValueError(f"mm_token_type_ids has shape {token_type.shape} but input_ids {input_ids.shape}: "
                             f"pass the processor's mm_token_type_ids of the same batch")
    video_grids = _as_grid(video_grid_thw)
    if getattr(config, "split_video_frames", False) and len(video_grids):
        # HF Qwen3-VL get_rope_index: repeat_interleave(video_grid_thw, t) with t set to 1.
        video_grids = np.repeat(video_grids, video_grids[:, 0], axis=0)
        video_grids[:, 0] = 1
    grids = {IMAGE: iter(_as_grid(image_grid_thw)), VIDEO: iter(video_grids)}
    if config.tokens_per_second is None:
        intervals = itertools.repeat(1.0)
    else:
        seconds = [1.0] * len(_as_grid(video_grid_thw)) if second_per_grid_ts is None else second_per_grid_ts
        intervals = iter([np.float32(config.tokens_per_second) * np.float32(s) for s in np.asarray(seconds)])
    bounds = [0, length] if cu_seqlens is None else [int(b) for b in np.asarray(cu_seqlens)]
    position_ids = np.zeros((3, batch, length), np.int64)
    next_position = np.zeros((batch, len(bounds) - 1), np.int64)
    for row in range(batch):
        for segment, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            real = np.nonzero(mask[row, start:end])[0] + start
            if getattr(config, "positions_1d", False):
                positions = np.broadcast_to(np.arange(len(real)), (3, len(real)))
            else:
                positions = _segment_positions(token_type[row, real], grids, config.spatial_merge_size, intervals)
            position_ids[:, row, real] = positions
            next_position[row, segment] = positions.max() + 1 if positions.size else 0
    return position_ids, next_position


# ----------------------------------------------------------------------------------------------------------------
# Vision tower metadata (HF transformers/vision_utils.py)
# ----------------------------------------------------------------------------------------------------------------

def vision_position_ids(grid_thw, spatial_merge_size):
    """(T_patches, 2) (row, column) of each patch, laid out block-major over merge x merge blocks, per frame."""
    rows = []
    for t, h, w in _as_grid(grid_thw).tolist():
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // spatial_merge_size, spatial_merge_size, w // spatial_merge_size, spatial_merge_size)
        hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
    return np.concatenate(rows, axis=0)


def vision_cu_seqlens(grid_thw):
    """(frames + 1,) int32: each frame of each image/video is its own attention segment of h*w patches."""
    grid = _as_grid(grid_thw)
    lengths = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def vision_window_index(grid_thw, spatial_merge_size, window_size, patch_size):
    """Qwen2.5-VL window attention: (window_index (T_merged,) int64, cu_window_seqlens (W+1,) int32).

    Merged tokens (merge x merge patch blocks) are reordered so each window of ``window_size`` pixels is contiguous;
    ``cu_window_seqlens`` counts patches (not merged tokens) per window, empty windows dropped.
    """
    merger_window = window_size // spatial_merge_size // patch_size
    unit = spatial_merge_size ** 2
    window_index, cu_window_seqlens, offset = [], [0], 0
    for t, h, w in _as_grid(grid_thw).tolist():
        llm_h, llm_w = h // spatial_merge_size, w // spatial_merge_size
        index = np.arange(t * llm_h * llm_w).reshape(t, llm_h, llm_w)
        pad_h, pad_w = merger_window - llm_h % merger_window, merger_window - llm_w % merger_window
        windows_h, windows_w = (llm_h + pad_h) // merger_window, (llm_w + pad_w) // merger_window
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        padded = padded.reshape(t, windows_h, merger_window, windows_w, merger_window).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, windows_h * windows_w, merger_window * merger_window)
        seqlens = (padded != -100).sum(-1).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + offset)
        cu_window_seqlens.extend((np.cumsum(seqlens) * unit + cu_window_seqlens[-1]).tolist())
        offset += t * llm_h * llm_w
    cu = np.asarray(cu_window_seqlens, np.int32)
    keep = np.concatenate([[True], cu[1:] != cu[:-1]])   # HF unique_consecutive: drop empty windows
    return np.concatenate(window_index).astype(np.int64), cu[keep]


def _patch_coordinates(grid_thw, spatial_merge_size):
    """(row, column, frame height, frame width) of every patch, (T_patches,) int64 each, merge-block order."""
    positions = vision_position_ids(grid_thw, spatial_merge_size)
    grid = _as_grid(grid_thw)
    sizes = np.repeat(grid[:, 1:], grid.prod(-1), axis=0)
    return positions[:, 0], positions[:, 1], sizes[:, 0], sizes[:, 1]


def _table_gathers(grid_thw, side, spatial_merge_size, axis_taps):
    """2-D gathers from per-axis taps: (indices (T, n*n) into the flattened side x side table, weights (T, n*n))."""
    row, col, height, width = _patch_coordinates(grid_thw, spatial_merge_size)
    row_taps, row_weights = axis_taps(row, height, side)
    col_taps, col_weights = axis_taps(col, width, side)
    taps = row_taps.shape[1] * col_taps.shape[1]
    indices = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, taps)
    weights = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, taps)
    return indices.astype(np.int64), weights.astype(np.float32)


def vision_interpolation(grid_thw, num_grid_per_side, spatial_merge_size):
    """Qwen3-VL's learned position table resampled to each frame's (h, w) grid, as 4-tap bilinear gathers
    (align_corners=True, HF ``get_vision_interpolation_indices_and_weights(mode="bilinear")``), patches in
    merge-block order and repeated per frame → (indices (T_patches, 4) int64 into the flattened side x side table,
    weights (T_patches, 4) float32). Computed in float32 with the same operations as HF, so the weights are
    bit-identical."""
    return _table_gathers(grid_thw, num_grid_per_side, spatial_merge_size, _bilinear_taps)


def vision_bicubic_interpolation(grid_thw, num_grid_per_side, spatial_merge_size):
    """GLM-4.1V's learned position table resampled to each frame's (h, w) grid as 16-tap bicubic gathers: what
    transformers 5.23's ``Glm4vVisionEmbeddings`` computes with ``F.grid_sample(mode="bicubic",
    align_corners=False, padding_mode="border")`` at the normalised patch centres ``((i + 0.5) / size) * 2 - 1``
    (cubic convolution a = -0.75, taps floor-1 .. floor+2 clamped to the border), patches in merge-block order and
    repeated per frame → (indices (T_patches, 16) int64 into the flattened side x side table, weights
    (T_patches, 16) float32). The per-axis weights follow grid_sample's float32 formulas; only the order of the
    16-term sum differs (measured: ≤ 2e-6 on an N(0, 1) 24 x 24 table)."""
    return _table_gathers(grid_thw, num_grid_per_side, spatial_merge_size, _bicubic_taps)


def _bilinear_taps(index, size, side):
    """Per-axis taps (floor, floor + 1, clamped) and hat weights, align_corners=True, in float32."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.maximum(size - 1, 1).astype(np.float32)
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
    return taps, np.maximum(np.float32(1) - distance, np.float32(0))


def _bicubic_taps(index, size, side):
    """Per-axis taps (floor-1 .. floor+2, clamped: border padding) and cubic-convolution weights (a = -0.75) at
    patch centre ``index`` of ``size``, align_corners=False, in float32 as torch's CPU grid_sample computes them."""
    f32 = np.float32
    normalised = ((index.astype(f32) + f32(0.5)) / size.astype(f32)) * f32(2) - f32(1)     # HF's grid
    src = (normalised + f32(1)) * f32(side / 2) - f32(0.5)                                   # grid_sample unnormalize
    floor = np.floor(src)
    t, a = src - floor, f32(-0.75)

    def near(x):     # |x| <= 1
        return ((a + f32(2)) * x - (a + f32(3))) * x * x + f32(1)

    def far(x):      # 1 < |x| < 2
        return ((a * x - f32(5) * a) * x + f32(8) * a) * x - f32(4) * a

    weights = np.stack([far(t + f32(1)), near(t), near(f32(1) - t), far(f32(2) - t)], axis=-1)
    taps = np.clip(floor.astype(np.int64)[:, None] + np.arange(-1, 3), 0, side - 1)
    return taps, weights.astype(f32)
