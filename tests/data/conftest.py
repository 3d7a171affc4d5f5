"""Fixtures of the data tests: tiny HF model dirs (processor + chat template) and small real datasets."""
import os

import pytest

from data_helpers import write_image, write_json, write_video
from mmx.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """{family: tiny HF dir} for qwen2_vl, qwen2_5_vl, qwen3_vl, glm4v and internvl."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny_checkpoint(str(root / family), family=family)
            for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "internvl")}


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory):
    """Two image sizes, a frame-folder video, an mp4 video and a text-only sample, in the mllm format."""
    root = tmp_path_factory.mktemp("mixed")
    write_image(root / "small.png", 56, 56, seed=0)
    write_image(root / "wide.png", 60, 90, seed=1)
    os.makedirs(root / "clip")
    for i in range(4):
        write_image(root / "clip" / f"{i:03d}.png", 56, 56, seed=10 + i)
    write_video(str(root / "clip.mp4"))
    records = [
        {"id": "small", "image": "small.png", "conversations": [
            {"from": "human", "value": "<image>Describe the image."}, {"from": "gpt", "value": "A cat."}]},
        {"id": "wide", "images": ["wide.png"], "conversations": [
            {"from": "human", "value": "<image>What is in the picture?"}, {"from": "gpt", "value": "two dogs"},
            {"from": "human", "value": "yes?"}, {"from": "gpt", "value": "no"}]},
        {"id": "frames", "video": "clip", "conversations": [
            {"from": "human", "value": "<video>Describe."}, {"from": "gpt", "value": "A red ball."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "yes"}]},
        {"id": "mp4", "videos": ["clip.mp4"], "conversations": [
            {"from": "human", "value": "<video>What moves?"}, {"from": "gpt", "value": "A ball."}]},
    ]
    write_json(root / "data.json", records)
    return root
