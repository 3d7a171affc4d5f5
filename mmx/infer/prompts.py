"""Prompts → model inputs with the checkpoint's own chat template and processor.

A conversation is a list of chat messages in transformers' format; user content lists hold
``{"type": "image", "image": path}``, ``{"type": "video", "video": path}`` and ``{"type": "text", "text": ...}``.
The chat template renders the placeholders (``<|vision_start|><|image_pad|><|vision_end|>``); the processor expands
them to one pad token per merged patch and returns pixels and grids. Batches are left padded so every row's last
prompt token sits at the end, where decoding continues.
"""
from pathlib import Path

import numpy as np


def user_message(text, images=(), videos=()):
    """A user turn: the images, then the videos, then the text (the order Qwen-VL examples use)."""
    content = [{"type": "image", "image": str(path)} for path in images]
    content += [{"type": "video", "video": str(path)} for path in videos]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def media_of(conversation):
    """(image paths, video paths) of a conversation, in the order the chat template places them."""
    images, videos = [], []
    for message in conversation:
        if isinstance(message["content"], str):
            continue
        for item in message["content"]:
            if item.get("type") == "image":
                images.append(item["image"])
            elif item.get("type") == "video":
                videos.append(item["video"])
    return images, videos


def _check_file(path, kind):
    if not Path(path).is_file():
        raise ValueError(f"{kind} file {path} does not exist; pass an existing {kind} path")


def load_image(path):
    from PIL import Image

    _check_file(path, "image")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ValueError(f"image file {path} cannot be read ({err}); pass a PNG/JPEG/... image") from err


def load_video(path):
    """(frames (T, H, W, 3) uint8, transformers VideoMetadata) decoded with PyAV; the processor samples frames
    (``do_sample_frames``/``fps`` of the checkpoint's video processor config) using the metadata's fps."""
    from transformers.video_utils import load_video as hf_load_video

    _check_file(path, "video")
    try:
        return hf_load_video(str(path), backend="pyav")
    except Exception as err:  # noqa: BLE001 - PyAV raises its own error types for every kind of bad file
        raise ValueError(f"video file {path} cannot be decoded with PyAV ({type(err).__name__}: {err}); pass an "
                         f"mp4/webm/... video") from err


def encode(processor, conversations):
    """The processor's numpy inputs for a batch of conversations (left padded), ending in an assistant turn."""
    texts, images, videos, metadata = [], [], [], []
    for conversation in conversations:
        texts.append(processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
        conversation_images, conversation_videos = media_of(conversation)
        images += [load_image(path) for path in conversation_images]
        for path in conversation_videos:
            frames, info = load_video(path)
            videos.append(frames)
            metadata.append(info)
    kwargs = {"images": images or None}
    if videos:
        kwargs.update(videos=videos, video_metadata=metadata)
    # InternVLProcessor flattens video frames with torch's Tensor.flatten: it needs "pt" tensors back
    tensors = "pt" if type(processor).__name__ == "InternVLProcessor" else "np"
    inputs = processor(text=texts, padding=True, padding_side="left", return_tensors=tensors, **kwargs)
    return {key: np.asarray(value.numpy() if hasattr(value, "numpy") else value) for key, value in inputs.items()}
