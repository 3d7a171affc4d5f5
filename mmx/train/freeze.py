"""Freeze flags (the guides' model.json keys) → parameters that do not train.

=========================================  =========================================================
key                                        parameters (mm names, docs/checkpoint-layout.md)
=========================================  =========================================================
image_encoder.vision_encoder.freeze        ``image_encoder.encoder.*`` (patch embed, position table, vision
                                           blocks) except Qwen3-VL's deepstack mergers
image_encoder.vision_projector.freeze      ``image_encoder.projector.*`` (the patch merger) and Qwen3-VL's
                                           deepstack mergers ``image_encoder.encoder.blocks.layers.{i}.
                                           deepstack_layer.*`` (mergers too, as MindSpeed-MM counts them)
text_decoder.freeze                        ``text_decoder.*`` except ``text_decoder.output_layer.*``
text_decoder.lm_head.freeze                ``text_decoder.output_layer.*``; with tied embeddings (no
                                           output layer) the shared ``text_decoder.embedding.*``
=========================================  =========================================================

Frozen parameters get ``requires_grad=False``: the backend builds no optimizer state for them and they stay
bit-identical through training (tested).
"""
from mmx import nn


def _deepstack(name):
    return ".deepstack_layer." in name


def _rules(model_config):
    image = model_config.get("image_encoder", {})
    text = model_config.get("text_decoder", {})
    return [
        (image.get("vision_encoder", {}).get("freeze", False),
         lambda n: n.startswith("image_encoder.encoder.") and not _deepstack(n)),
        (image.get("vision_projector", {}).get("freeze", False),
         lambda n: n.startswith("image_encoder.projector.") or (n.startswith("image_encoder.") and _deepstack(n))),
        (text.get("freeze", False),
         lambda n: n.startswith("text_decoder.") and not n.startswith("text_decoder.output_layer.")),
        (text.get("lm_head", {}).get("freeze", False), lambda n: n.startswith("text_decoder.output_layer.")),
    ]


def apply_freeze(model, model_config):
    """Set ``requires_grad=False`` on the parameters the config's freeze flags name; returns their names."""
    named = nn.named_parameters(model)
    names = [name for name, _ in named]
    rules = _rules(model_config)
    tied = not any(name.startswith("text_decoder.output_layer.") for name in names)
    if tied and model_config.get("text_decoder", {}).get("lm_head", {}).get("freeze", False):
        rules.append((True, lambda n: n.startswith("text_decoder.embedding.")))
    frozen = []
    for name, param in named:
        if any(flag and matches(name) for flag, matches in rules):
            nn.set_requires_grad(param, False)
            frozen.append(name)
    return frozen
