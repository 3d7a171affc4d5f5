"""Host-side layout of multimodal RoPE frequencies, shared by every backend's ``ops.rotary_cos_sin``.

Each of the D/2 rotary frequencies takes its angle from one row of the (temporal, height, width) position ids:

- contiguous sections (Qwen2-VL, Qwen2.5-VL, GLM; HF ``apply_multimodal_rotary_pos_emb``): ``mrope_section`` =
  [t, h, w] gives frequencies 0..t-1 the temporal row, the next h the height row, the last w the width row;
- interleaved (Qwen3-VL; HF ``Qwen3VLTextRotaryEmbedding.recomposition_frequencies``): every frequency starts on
  the temporal row, then slots ``1, 4, 7, ...`` below ``3 * h`` take the height row and slots ``2, 5, 8, ...``
  below ``3 * w`` the width row: T H W T H W ... with the last slots temporal when t > h, w.
"""
import numpy as np


def mrope_frequency_rows(mrope_section, interleaved=False):
    """(D/2,) int64: the position row (0 temporal, 1 height, 2 width) of each rotary frequency."""
    sections = [int(size) for size in mrope_section]
    if len(sections) != 3:
        raise ValueError(f"mrope_section {list(mrope_section)} must have 3 entries (temporal, height, width)")
    if not interleaved:
        return np.repeat(np.arange(3), sections).astype(np.int64)
    rows = np.zeros(sum(sections), np.int64)
    for row, offset in ((1, 1), (2, 2)):
        rows[offset:3 * sections[row]:3] = row
    return rows
