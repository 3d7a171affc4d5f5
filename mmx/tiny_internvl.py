"""Tiny random InternVL3 (``internvl``) checkpoints for mmx.tiny.make_tiny_checkpoint (see its module doc).

Two vision towers (research notes §7.5): ``vision_variant="300m"`` (InternViT-300M of InternVL3-1B/2B/8B: LayerNorm,
q/k/v biases, no qk-norm) and ``"6b"`` (InternViT-6B of InternVL3-78B: RMSNorm, qk-norm over the full width, no
q/k/v biases); the 6B-style tower's position table is 3x3 (image_size 42) while tiles are 56 px (4x4 patches), so
every tile resamples it (HF ``interpolate_pos_encoding``). Two weight layouts: ``hf_layout="hf"`` (the names
transformers 5.23's ``save_pretrained`` writes: ``vision_tower.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.weight``) and ``"original"`` (OpenGVLab's remote-code repos:
``vision_model.*`` with a fused ``attn.qkv``, ``mlp1.{0,1,3}``, ``language_model.*``); config.json, tokenizer and
processor files are the ``-hf`` ones in both (transformers cannot run remote code here).

Processor: GotOcr2ImageProcessor with 56 px tiles (``max_patches`` 4: a 60x90 image becomes 2 tiles + a thumbnail),
InternVLVideoProcessor (every frame one 56 px tile), ``image_seq_length`` 4 (4x4 patches pixel-shuffled to 2x2).
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

from mmx.tiny import save_config

# Qwen2's chat tokens and InternVL's image tokens, ids 0..6 in the tiny vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")
TOKEN_ID = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
TILE = 56
# The InternVL3-hf chat template's structure: <IMG_CONTEXT>\n per image, <video>\n per video (the processor expands
# them), Qwen2 turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}{{ '<video>\\n' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SIZES = {
    "text": dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096),
    "300m": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=TILE,
                 patch_size=14, norm_type="layer_norm", attention_bias=True, use_qk_norm=False,
                 layer_norm_eps=1e-6),
    "6b": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=42,
               patch_size=14, norm_type="rms_norm", attention_bias=False, use_qk_norm=True, layer_norm_eps=1e-6),
}


def make_internvl(out_dir, tied, seed, overrides, init_class, write_tokenizer):
    """Write the tiny InternVL3 checkpoint (mmx.tiny passes its random initialiser and tokenizer writer)."""
    variant = overrides.pop("vision_variant", "300m")
    layout = overrides.pop("hf_layout", "hf")
    if variant not in ("300m", "6b") or layout not in ("hf", "original"):
        raise ValueError(f"make_tiny_checkpoint(internvl): vision_variant {variant!r} / hf_layout {layout!r}; use "
                         f"'300m' or '6b' and 'hf' or 'original'")
    config = _write_config(out_dir, tied, variant, overrides)
    tensors = _weights(config, init_class(np.random.default_rng(seed)))
    if layout == "original":
        tensors = hf_to_original(tensors, config)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out_dir, CHAT_TEMPLATE, SPECIAL_TOKENS, {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 4096, "errors": "replace",
        "split_special_tokens": False, "clean_up_tokenization_spaces": False, "padding_side": "left",
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "extra_special_tokens": {"start_image_token": "<img>", "end_image_token": "</img>",
                                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    })
    shared = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
              "rescale_factor": 1 / 255, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "size": {"height": TILE, "width": TILE}}
    image = dict(shared, image_processor_type="GotOcr2ImageProcessor", crop_to_patches=True, min_patches=1,
                 max_patches=4)
    video = dict(shared, video_processor_type="InternVLVideoProcessor", do_sample_frames=False)
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": config["image_seq_length"]}
    for name, content in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                          ("processor_config.json", processor)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)
    return out_dir


def _write_config(out_dir, tied, variant, overrides):
    from transformers import InternVLConfig

    text, vision = dict(TINY_SIZES["text"]), dict(TINY_SIZES[variant])
    for key, value in overrides.items():
        if key.startswith("text_"):
            text[key[len("text_"):]] = value
        elif key.startswith("vision_"):
            vision[key[len("vision_"):]] = value
        else:
            raise ValueError(f"make_tiny_checkpoint(internvl): unknown override {key!r}; use text_<field>=, "
                             f"vision_<field>=, vision_variant= or hf_layout=")
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    text.update(model_type="qwen2",
                bos_token_id=TOKEN_ID["<|endoftext|>"], eos_token_id=TOKEN_ID["<|im_end|>"],
                pad_token_id=TOKEN_ID["<|endoftext|>"], tie_word_embeddings=tied)
    seq = (TILE // vision["patch_size"] // 2) ** 2
    hf_config = InternVLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied,
                               image_token_id=TOKEN_ID["<IMG_CONTEXT>"], image_seq_length=seq,
                               bos_token_id=TOKEN_ID["<|endoftext|>"], eos_token_id=TOKEN_ID["<|im_end|>"],
                               pad_token_id=TOKEN_ID["<|endoftext|>"])
    return save_config(hf_config, out_dir, TOKEN_ID)


def _weights(config, init):
    """Random tensors under the names transformers 5.23's save_pretrained writes; layer scales 1 + 0.1 N."""
    vision, text = config["vision_config"], config["text_config"]
    width, inner = vision["hidden_size"], vision["intermediate_size"]
    side = vision["image_size"][0] // vision["patch_size"][0]
    rms, bias = vision["norm_type"] == "rms_norm", vision["attention_bias"]
    tower = "vision_tower."
    init.raw(tower + "embeddings.cls_token", (1, 1, width), 0.5)
    patch = (width, 3) + tuple(vision["patch_size"])
    init.raw(tower + "embeddings.patch_embeddings.projection.weight", patch, np.prod(patch[1:]) ** -0.5)
    init.raw(tower + "embeddings.patch_embeddings.projection.bias", (width,), 0.1)
    init.raw(tower + "embeddings.position_embeddings", (1, 1 + side * side, width), 0.5)
    for i in range(vision["num_hidden_layers"]):
        layer = f"{tower}encoder.layer.{i}."
        init.norm(layer + "layernorm_before", width, bias=not rms)
        for name in ("q_proj", "k_proj", "v_proj"):
            init.linear(layer + "attention." + name, width, width, bias=bias)
        if vision["use_qk_norm"]:
            init.norm(layer + "attention.q_norm", width, bias=False)
            init.norm(layer + "attention.k_norm", width, bias=False)
        init.linear(layer + "attention.projection_layer", width, width, bias=True)
        init.norm(layer + "layernorm_after", width, bias=not rms)
        init.linear(layer + "mlp.fc1", inner, width, bias=True)
        init.linear(layer + "mlp.fc2", width, inner, bias=True)
        init.tensors[layer + "lambda_1"] = 1.0 + init._normal((width,), 0.1)
        init.tensors[layer + "lambda_2"] = 1.0 + init._normal((width,), 0.1)
    merged, hidden = width * 4, text["hidden_size"]
    init.norm("multi_modal_projector.layer_norm", merged, bias=True)
    init.linear("multi_modal_projector.linear_1", hidden, merged, bias=True)
    init.linear("multi_modal_projector.linear_2", hidden, hidden, bias=True)
    heads, kv_heads = text["num_attention_heads"], text["num_key_value_heads"]
    head_dim = hidden // heads
    init.raw("language_model.model.embed_tokens.weight", (text["vocab_size"], hidden), 0.25)
    for j in range(text["num_hidden_layers"]):
        layer = f"language_model.model.layers.{j}."
        init.norm(layer + "input_layernorm", hidden, bias=False)
        init.linear(layer + "self_attn.q_proj", heads * head_dim, hidden, bias=True)
        init.linear(layer + "self_attn.k_proj", kv_heads * head_dim, hidden, bias=True)
        init.linear(layer + "self_attn.v_proj", kv_heads * head_dim, hidden, bias=True)
        init.linear(layer + "self_attn.o_proj", hidden, heads * head_dim, bias=False)
        init.norm(layer + "post_attention_layernorm", hidden, bias=False)
        init.linear(layer + "mlp.gate_proj", text["intermediate_size"], hidden, bias=False)
        init.linear(layer + "mlp.up_proj", text["intermediate_size"], hidden, bias=False)
        init.linear(layer + "mlp.down_proj", hidden, text["intermediate_size"], bias=False)
    init.norm("language_model.model.norm", hidden, bias=False)
    if not config.get("tie_word_embeddings", False):
        init.linear("language_model.lm_head", text["vocab_size"], hidden, bias=False)
    return init.tensors


# -hf vision names → the original remote-code names (OpenGVLab modeling_intern_vit.py / modeling_internvl_chat.py).
_ORIGINAL_VISION = (("embeddings.cls_token", "embeddings.class_embedding"),
                    ("embeddings.patch_embeddings.projection.", "embeddings.patch_embedding."),
                    ("embeddings.position_embeddings", "embeddings.position_embedding"),
                    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."), ("lambda_1", "ls1"),
                    ("lambda_2", "ls2"), ("attention.projection_layer.", "attn.proj."),
                    ("attention.q_norm.", "attn.q_norm."), ("attention.k_norm.", "attn.k_norm."),
                    ("encoder.layer.", "encoder.layers."))
_ORIGINAL_PROJECTOR = {"layer_norm": "0", "linear_1": "1", "linear_2": "3"}


def hf_to_original(tensors, config):
    """{-hf name: array} (save_pretrained names) → the same weights under the original remote-code names: vision
    q/k/v fused into ``attn.qkv`` ([q; k; v] rows), the projector as ``mlp1.{0,1,3}``. The inverse of the mapping
    the tests use to run an original-layout checkpoint through transformers (:func:`original_to_hf`)."""
    out = {}
    for name, array in tensors.items():
        if name.startswith("vision_tower."):
            rest = name[len("vision_tower."):]
            if ".attention.q_proj." in rest or ".attention.k_proj." in rest or ".attention.v_proj." in rest:
                if ".attention.q_proj." in rest:
                    kind = rest.rsplit(".", 1)[1]
                    parts = [tensors[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                    rest = rest.replace("attention.q_proj", "attn.qkv")
                    for old, new in _ORIGINAL_VISION:
                        rest = rest.replace(old, new)
                    out[f"vision_model.{rest}"] = np.concatenate(parts, axis=0)
                    assert kind in ("weight", "bias")
                continue
            for old, new in _ORIGINAL_VISION:
                rest = rest.replace(old, new)
            out[f"vision_model.{rest}"] = array
        elif name.startswith("multi_modal_projector."):
            part, kind = name[len("multi_modal_projector."):].split(".")
            out[f"mlp1.{_ORIGINAL_PROJECTOR[part]}.{kind}"] = array
        else:
            out[name] = array
    return out


def original_to_hf(tensors):
    """The original remote-code names → the names transformers' InternVL loads (save_pretrained's), q/k/v split
    from ``attn.qkv``; what a test needs to run an original-layout checkpoint through transformers (its conversion
    script, ``convert_internvl_weights_to_hf.py``, is not in the 5.23 wheel)."""
    out = {}
    for name, array in tensors.items():
        if name.startswith("vision_model."):
            rest = name[len("vision_model."):]
            for new, old in reversed(_ORIGINAL_VISION):
                rest = rest.replace(old, new)
            if ".attn.qkv." in rest:
                third = array.shape[0] // 3
                for index, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    out["vision_tower." + rest.replace("attn.qkv", f"attention.{proj}")] = \
                        array[index * third:(index + 1) * third]
                continue
            out["vision_tower." + rest] = array
        elif name.startswith("mlp1."):
            _, index, kind = name.split(".")
            part = {value: key for key, value in _ORIGINAL_PROJECTOR.items()}[index]
            out[f"multi_modal_projector.{part}.{kind}"] = array
        else:
            out[name] = array
    return out
