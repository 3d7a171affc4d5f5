"""Helpers for the conversion tests: byte-for-byte tensor comparison, legacy names, truncated checkpoints.

(A module of its own, not conftest.py: test modules import these by name, and "conftest" is ambiguous once the
whole suite runs in one process.)
"""
import json
import os
import shutil

import numpy as np

from mmx.checkpoint.safetensors_io import load_file

# Vision depth per family in mmx.tiny (Qwen2-VL 2 blocks, Qwen2.5-VL and Qwen3-VL 3) and LLM depth 2 for all.
VISION_DEPTH = {"qwen2_vl": 2, "qwen2_5_vl": 3, "qwen3_vl": 3, "qwen3_vl_moe": 3, "glm4v": 2, "glm4v_moe": 2}


def legacy_name(name):
    for new, old in (("model.visual.", "visual."), ("model.language_model.", "model.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def hf_tensors(hf_dir):
    """{name: array} over every safetensors file of an HF directory."""
    tensors = {}
    for file in sorted(os.listdir(hf_dir)):
        if file.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(hf_dir, file)))
    return tensors


def assert_same_tensors(got, want):
    """Same names, dtypes, shapes and bytes."""
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name


def truncate_weights(src_dir, dst_dir):
    """Copy an HF directory, cutting each safetensors file right after its header: names and shapes stay
    readable, every tensor read fails. A test that gets its validation error from such a copy proves the
    validation ran before any tensor was read."""
    shutil.copytree(src_dir, dst_dir)
    for file in os.listdir(dst_dir):
        if file.endswith(".safetensors"):
            path = os.path.join(dst_dir, file)
            with open(path, "rb") as handle:
                header_len = int(np.frombuffer(handle.read(8), "<u8")[0])
            os.truncate(path, 8 + header_len)
    return dst_dir


def read_config(path):
    with open(os.path.join(path, "config.json")) as handle:
        return json.load(handle)
