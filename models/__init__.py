"""Model families, installed as mmx.models (see ARCHITECTURE.md).

``build(hf_config, stage=None)`` reads a Hugging Face ``config.json`` (dict, file or directory), picks the family
from its ``model_type`` and builds the model on the current backend (zero weights; fill them with
``load_mm_state``). ``config_from_hf(hf_config)`` gives the plain-value config alone.
"""
import importlib

FAMILIES = {
    "qwen2_vl": ("mmx.models.qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("mmx.models.qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("mmx.models.qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "glm4v": ("mmx.models.glm4v", "Glm4vForConditionalGeneration"),
    "qwen3_vl_moe": ("mmx.models.qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration"),
    "internvl": ("mmx.models.internvl", "InternVLForConditionalGeneration"),
    "glm4v_moe": ("mmx.models.glm4v_moe", "Glm4vMoeForConditionalGeneration"),
}


def family_of(hf_config):
    from mmx.models.common.config import read_hf_config

    model_type = read_hf_config(hf_config).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json: model_type {model_type!r} is not supported; mmx models: "
                         f"{', '.join(FAMILIES)}")
    return model_type


def config_from_hf(hf_config):
    """The family's ModelConfig of ``hf_config`` (dict, config.json path or checkpoint directory)."""
    package, _ = FAMILIES[family_of(hf_config)]
    return importlib.import_module(f"{package}.config").from_hf(hf_config)


def build(hf_config, stage=None):
    """The model of ``hf_config`` on the current backend, holding ``stage`` (default: all of it)."""
    package, class_name = FAMILIES[family_of(hf_config)]
    config = importlib.import_module(f"{package}.config").from_hf(hf_config)
    return getattr(importlib.import_module(f"{package}.model"), class_name)(config, stage)


def load_mm_state(model, tensors, strict=True):
    """Fill ``model`` from {mm name: numpy array}; see mmx.models.common.weights.load_mm_state."""
    from mmx.models.common.weights import load_mm_state as load

    return load(model, tensors, strict)
