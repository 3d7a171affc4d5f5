"""Tiny HF checkpoints (mmx.tiny) shared by the conversion tests, plus helpers that compare tensors byte for byte."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from mmx.checkpoint.safetensors_io import load_file, save_file
from mmx.tiny import make_tiny_checkpoint

# Vision depth per family in mmx.tiny (Qwen2-VL 2 blocks, Qwen2.5-VL 3) and LLM depth 2 for both.
VISION_DEPTH = {"qwen2_vl": 2, "qwen2_5_vl": 3}


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """tiny_hf(family, tied=False, dtype="float32", legacy=False) → path of a cached tiny HF checkpoint.

    ``dtype="bfloat16"`` re-saves the weights as bf16; ``legacy=True`` renames them to the old hub names
    (visual.*, model.layers.*, model.embed_tokens, model.norm).
    """
    cache = {}

    def build(family, tied=False, dtype="float32", legacy=False):
        key = (family, tied, dtype, legacy)
        if key not in cache:
            path = str(tmp_path_factory.mktemp(f"hf_{family}_{int(tied)}_{dtype}_{int(legacy)}"))
            make_tiny_checkpoint(path, family=family, tied=tied)
            if dtype != "float32" or legacy:
                weights_path = os.path.join(path, "model.safetensors")
                weights = load_file(weights_path)
                if dtype == "bfloat16":
                    weights = {name: array.astype(ml_dtypes.bfloat16) for name, array in weights.items()}
                if legacy:
                    weights = {legacy_name(name): array for name, array in weights.items()}
                save_file(weights, weights_path, {"format": "pt"})
            cache[key] = path
        return cache[key]

    return build


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
