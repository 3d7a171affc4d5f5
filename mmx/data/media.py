"""Reading images and videos from disk into what the processor takes (no resizing here: the processor does it).

Images: PIL, converted to RGB. Videos: a file decoded with PyAV, or a folder of frame images (sorted by name,
recorded at ``frame_folder_fps``). Frames are sampled at ``video_fps`` and capped at ``video_maxlen`` (evenly spread),
and the processor gets a ``VideoMetadata`` so it knows the sampled fps (Qwen2.5-VL's ``second_per_grid_ts``).
Failures raise :class:`DataError` with kind ``missing_media`` or ``corrupt_media``.
"""
import os

import numpy as np

from mmx.data.errors import CORRUPT_MEDIA, MISSING_MEDIA, DataError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image(path, sample):
    """An RGB ``PIL.Image`` (fully decoded, so a truncated file fails here, not inside the processor)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise _error(MISSING_MEDIA, sample, f"image {path} not found")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise _error(CORRUPT_MEDIA, sample, f"image {path} cannot be decoded ({type(err).__name__}: {err}); "
                                            f"re-export it or remove the sample") from None


def sample_frame_indices(total_frames, native_fps, target_fps, max_frames):
    """Indices of the frames to keep: every ``native_fps / target_fps``-th frame, at most ``max_frames`` (spread
    evenly), at least one."""
    if total_frames <= 0:
        return []
    step = max(native_fps / target_fps, 1.0) if target_fps else 1.0
    indices = np.arange(0, total_frames, step).astype(np.int64)
    if max_frames and len(indices) > max_frames:
        indices = indices[np.linspace(0, len(indices) - 1, max_frames).round().astype(np.int64)]
    return sorted(set(int(i) for i in indices))


def load_video(path, sample, target_fps, max_frames, folder_fps):
    """(frames (T, H, W, 3) uint8, ``transformers.video_utils.VideoMetadata``) of a video file or frame folder."""
    from transformers.video_utils import VideoMetadata

    if os.path.isdir(path):
        frames, native_fps, total = _frame_folder(path, sample, target_fps, max_frames, folder_fps)
    elif os.path.isfile(path):
        frames, native_fps, total = _video_file(path, sample, target_fps, max_frames)
    else:
        raise _error(MISSING_MEDIA, sample, f"video {path} not found (a video file or a folder of frames)")
    indices, frames = zip(*frames)
    return np.stack(frames), VideoMetadata(total_num_frames=total, fps=native_fps, frames_indices=list(indices),
                                           height=frames[0].shape[0], width=frames[0].shape[1])


def _frame_folder(path, sample, target_fps, max_frames, folder_fps):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_SUFFIXES))
    if not names:
        raise _error(CORRUPT_MEDIA, sample, f"video folder {path} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
    keep = sample_frame_indices(len(names), folder_fps, target_fps, max_frames)
    frames = [(i, np.asarray(load_image(os.path.join(path, names[i]), sample))) for i in keep]
    if len({f.shape for _, f in frames}) != 1:
        raise _error(CORRUPT_MEDIA, sample, f"video folder {path}: frames have different sizes "
                                            f"{sorted({f.shape for _, f in frames})}")
    return frames, folder_fps, len(names)


def _video_file(path, sample, target_fps, max_frames):
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or stream.guessed_rate or 0) or 24.0
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except Exception as err:  # noqa: BLE001 - PyAV raises FFmpeg error types
        raise _error(CORRUPT_MEDIA, sample, f"video {path} cannot be decoded ({type(err).__name__}: {err})") from None
    if not decoded:
        raise _error(CORRUPT_MEDIA, sample, f"video {path} has no frames")
    keep = sample_frame_indices(len(decoded), native_fps, target_fps, max_frames)
    return [(i, decoded[i]) for i in keep], native_fps, len(decoded)


def _error(kind, sample, problem):
    return DataError(kind, sample["file"], sample["id"], problem, line=sample.get("line"))
