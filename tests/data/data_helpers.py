"""Helpers of the data tests: media writers, JSON writers and a config shortcut."""
import json

import numpy as np

from mmx.data.config import load_data_config


def write_image(path, height, width, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_video(path, frames=8, size=56, fps=4):
    """An mp4 (mpeg4 codec) of random frames, written with PyAV."""
    import av

    rng = np.random.default_rng(1)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_json(path, records, jsonl=False):
    with open(path, "w") as f:
        if jsonl:
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, f)
    return str(path)


def data_config(model_dir, dataset, **keys):
    return load_data_config(dict(model_name_or_path=model_dir, dataset=dataset, **keys))


def absolute_media(records, root):
    """``records`` with their image/video paths made absolute under ``root`` (so a copy of the file reads them)."""
    for record in records:
        for key in ("image", "images", "video", "videos"):
            if key in record:
                paths = [record[key]] if isinstance(record[key], str) else record[key]
                record[key] = [str(root / p) for p in paths]
    return records
