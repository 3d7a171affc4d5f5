"""Model families, installed as mmx.models (see ARCHITECTURE.md).

``build(hf_config, stage=None)`` reads a Hugging Face ``config.json`` (dict, file or directory), picks the family
from its ``model_type`` and builds the model on the current backend (zero weights; fill them with
``load_mm_state``); ``build_streamed(hf_config, mm_dir)`` builds it without weight storage and fills it tensor by
tensor from an mm checkpoint (big models). ``config_from_hf(hf_config)`` gives the plain-value config alone.
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

# model_type values of configs written for another project's remote code → what that config is and the fix
FOREIGN_CONFIGS = {
    "internvl_chat": "OpenGVLab's remote-code InternVL config (InternVLChatConfig: llm_config / vision_config), "
                     "which transformers and mmx do not read; copy config.json, preprocessor_config.json, "
                     "processor_config.json, video_preprocessor_config.json, the tokenizer files and "
                     "chat_template.jinja from the matching -hf repo (e.g. OpenGVLab/InternVL3-8B-hf) into this "
                     "directory: mmx reads the original vision_model.* / mlp1.* safetensors as they are",
}


def foreign_config_error(model_type, source="config.json"):
    """The one-line error for a ``model_type`` of :data:`FOREIGN_CONFIGS`, else None."""
    if model_type in FOREIGN_CONFIGS:
        return f"{source}: model_type {model_type!r} is {FOREIGN_CONFIGS[model_type]}"
    return None


def family_of(hf_config):
    from mmx.models.common.config import read_hf_config

    model_type = read_hf_config(hf_config).get("model_type")
    source = str(hf_config) if isinstance(hf_config, str) and hf_config.endswith(".json") else "config.json"
    foreign = foreign_config_error(model_type, source)
    if foreign:
        raise ValueError(foreign)
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


def build_streamed(hf_config, mm_dir, stage=None, iteration=None):
    """The model of ``hf_config`` filled from the mm checkpoint ``mm_dir`` (any layout) without ever holding the
    model twice: built under ``nn.empty_init()`` (no weight storage: torch's meta device, MindSpore's lazy
    initializers), then each parameter gets its storage as its tensor streams from the shards
    (:func:`mmx.models.common.weights.stream_mm_state`). ``stage``: keep only that pipeline stage's tensors (a
    rank-local loader builds on this: it would pass its own stage and read only its shards).
    """
    from mmx import nn
    from mmx.checkpoint.layout import stored_name
    from mmx.checkpoint.store import MMSource
    from mmx.models.common.weights import stream_mm_state

    source = MMSource(mm_dir, iteration, streaming=True)
    with nn.empty_init():
        model = build(hf_config, stage)
    names = None if stage is None else (lambda name: stored_name(name, stage, source.plan, source.tied))
    return stream_mm_state(model, source, names)


def load_mm_state(model, tensors, strict=True):
    """Fill ``model`` from {mm name: numpy array}; see mmx.models.common.weights.load_mm_state."""
    from mmx.models.common.weights import load_mm_state as load

    return load(model, tensors, strict)
