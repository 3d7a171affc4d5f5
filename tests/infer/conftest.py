"""Tiny checkpoints, media and loaded pipelines shared by the inference tests, built once per session.

The variants cover the families and both output-layer forms: Qwen2.5-VL, Qwen3-VL-MoE, GLM-4.1V and InternVL3 untied,
Qwen2-VL and Qwen3-VL tied.
"""
import pytest

from mmx.tiny import make_tiny_checkpoint

from infer_helpers import Reference, write_media

VARIANTS = {"qwen2_5_vl": False, "qwen2_vl": True, "qwen3_vl": True, "qwen3_vl_moe": False,  # family → tied
            "glm4v": False, "glm4v_moe": False, "internvl": False}

_pipelines, _references, _checkpoints = {}, {}, {}


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """hf_dir(family) → a tiny HF checkpoint directory."""
    def get(family):
        if family not in _checkpoints:
            _checkpoints[family] = make_tiny_checkpoint(str(tmp_path_factory.mktemp(family)), family,
                                                        tied=VARIANTS[family])
        return _checkpoints[family]
    return get


@pytest.fixture(scope="session")
def pipeline(hf_dir):
    """pipeline(family) → mmx.infer.Pipeline on the current backend, loaded from the HF directory."""
    from mmx import infer

    def get(family):
        if family not in _pipelines:
            _pipelines[family] = infer.load(hf_dir(family))
        return _pipelines[family]
    return get


@pytest.fixture(scope="session")
def reference(hf_dir):
    """reference(family) → the transformers greedy reference of the same directory."""
    def get(family):
        if family not in _references:
            _references[family] = Reference(hf_dir(family))
        return _references[family]
    return get
