"""Tiny random Hugging Face checkpoints of Qwen2-VL / Qwen2.5-VL / Qwen3-VL, built locally with no downloads.

``make_tiny_checkpoint(out_dir, family="qwen2_5_vl")`` writes a directory that transformers loads through its real
``from_pretrained`` paths (``AutoProcessor``, ``AutoTokenizer``, ``Qwen2_5_VLForConditionalGeneration``)::

    config.json                   transformers' own config class, written by it (tiny sizes, see TINY_SIZES)
    model.safetensors             random float32 weights under the names transformers 5.x save_pretrained writes
                                  (``model.visual.*``, ``model.language_model.*``, ``lm_head.weight`` unless tied)
    generation_config.json
    tokenizer.json + tokenizer_config.json   byte-level BPE trained with ``tokenizers`` + the Qwen special tokens
    chat_template.jinja           the family's instruct chat template
    preprocessor_config.json      Qwen2VLImageProcessor with small min/max pixels (images stay a few patches;
                                  Qwen3-VL: 16-pixel patches and its 0.5 mean / std, as on the hub)
    video_preprocessor_config.json, processor_config.json   (Qwen3-VL: Qwen3VLVideoProcessor, Qwen3VLProcessor)

Qwen3-VL's tiny config exercises every branch of its reference (research notes §3.5): 3 vision blocks with deepstack
mergers after blocks 0 and 1, a 3x3 learned position table (every image grid is resampled), head_dim 32 with 4
heads of a 64-wide LLM (heads * head_dim != hidden) and interleaved mRoPE sections [6, 5, 5].

Weights come from numpy only (``numpy.random.default_rng(seed)``), so the builder works where torch is not
installed; the same seed and overrides give byte-identical files. Norm weights are ``1 + 0.1 * randn`` and biases
``0.1 * randn`` so a parity test notices a dropped norm or bias.

Overrides: any ``text_config`` / ``vision_config`` field by name with a ``text_`` / ``vision_`` prefix
(``text_num_attention_heads=8``, ``vision_depth=4``), or a top-level field (``mrope_section=[2, 2, 4]``,
``vision_start_token_id`` etc. are fixed by the tokenizer and cannot be overridden).
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe", "internvl")
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")

# The Qwen special tokens, in the order they get ids 0..6 in the tiny vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
TOKEN_ID = {token: index for index, token in enumerate(SPECIAL_TOKENS)}

BPE_VOCAB_SIZE = 300   # byte-level alphabet (256) + special tokens + a few merges
PATCH_SIZE = 14        # the real Qwen-VL patch; the resize factor is patch * merge = 28 pixels
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56   # every image is at least 2x2 merged tokens
MAX_PIXELS = 56 * 84   # ... and at most 6 merged tokens, so the vision tower stays tiny
# Qwen3-VL: 16-pixel patches, resize factor 32; images 64x64 .. 64x96 (4..6 merged tokens), videos up to 4 such frames.
QWEN3_PATCH_SIZE = 16
QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS = 64 * 64, 64 * 96

TINY_SIZES = {
    "text": dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096),
    "mrope_section": [2, 3, 3],   # sums to head_dim / 2 = 64 / 4 / 2
    "rope_theta": 10000.0,
    "qwen2_vl_vision": dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                            hidden_act="quick_gelu"),
    # window_size 56 px = 2x2 merged tokens per window: a 2x3 merged-token image is cut into 2 windows, so window
    # attention differs from full attention; block 1 is a full-attention block.
    "qwen2_5_vl_vision": dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                              window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu"),
    "qwen3_vl_vision": dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=9,
                            deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh"),
    # The Qwen3 LLM: explicit head_dim (4 heads x 32 != hidden 64), sections [6, 5, 5] (the [24, 20, 20] shape).
    "qwen3_vl_text": dict(head_dim=32, attention_bias=False),
    # Qwen3-VL-MoE: Qwen3-VL's vision and attention; 4 experts, top-2, layer 0 dense (mlp_only_layers), 2 * 24 != 64
    # so each stacked-expert orientation is told apart by its shape.
    "qwen3_vl_moe_text": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, decoder_sparse_step=1,
                              mlp_only_layers=[0]),
    "qwen3_vl_mrope_section": [6, 5, 5],
    "qwen3_vl_rope_theta": 5000000.0,
}

# The chat template of Qwen2-VL-7B-Instruct / Qwen2.5-VL-7B-Instruct (default system prompt, one
# <|vision_start|><|image_pad|><|vision_end|> per image, <|video_pad|> per video).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The structure of the Qwen3-VL instruct template (no default system prompt; one
# <|vision_start|><|image_pad|><|vision_end|> per image, <|vision_start|><|video_pad|><|vision_end|> per video).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.", "Describe the image.", "What is in the picture?", "A cat sits on a mat.",
    "The video shows a red ball rolling across the floor.", "user", "assistant", "system",
    "There are two dogs and one bird in the photo.", "Answer the question with a short sentence.",
    "The quick brown fox jumps over the lazy dog.", "Picture 1: Video 1:", "yes no maybe 0 1 2 3 4 5 6 7 8 9",
]


def make_tiny_checkpoint(out_dir, family="qwen2_5_vl", tied=False, seed=0, expert_layout="hub", **overrides):
    """Write a tiny random HF checkpoint of ``family`` into ``out_dir`` (created) and return ``out_dir``.

    ``tied``: ``tie_word_embeddings`` (no ``lm_head.weight`` in the file). ``seed``: numpy seed of the weights.
    ``expert_layout`` (MoE): stacked experts as the hub files hold them, (E, in, out) ("hub"), or as transformers'
    ``save_pretrained`` writes them, (E, out, in) ("transformers"); transformers loads both.
    ``overrides``: ``text_<field>=`` / ``vision_<field>=`` / ``mrope_section=`` / ``rope_theta=`` (see module doc).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: make_tiny_checkpoint supports {', '.join(FAMILIES)}")
    if expert_layout not in ("hub", "transformers"):
        raise ValueError(f"expert_layout {expert_layout!r}: use 'hub' or 'transformers'")
    os.makedirs(out_dir, exist_ok=True)
    if family in ("glm4v", "glm4v_moe"):
        return _make_glm4v(out_dir, tied, seed, dict(overrides), moe=family == "glm4v_moe")
    if family == "internvl":      # mmx/tiny_internvl.py: vision_variant= "300m" | "6b", hf_layout= "hf" | "original"
        from mmx.tiny_internvl import make_internvl

        return make_internvl(out_dir, tied, seed, dict(overrides), _Init, _write_tokenizer)
    config = _write_config(out_dir, family, tied, dict(overrides))
    save_file(_random_weights(config, family, np.random.default_rng(seed), expert_layout),
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(out_dir, QWEN3_CHAT_TEMPLATE if family in QWEN3 else CHAT_TEMPLATE)
    _write_processor(out_dir, family)
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# config.json and generation_config.json
# ----------------------------------------------------------------------------------------------------------------

def _write_config(out_dir, family, tied, overrides):
    """Build the config with transformers' own class (it writes the exact 5.x format) and return it as a dict."""
    qwen3 = family in QWEN3
    text = dict(TINY_SIZES["text"], **(TINY_SIZES["qwen3_vl_text"] if qwen3 else {}),
                **TINY_SIZES.get(f"{family}_text", {}) if family != "qwen3_vl" else {})
    vision = dict(TINY_SIZES["qwen3_vl_vision" if qwen3 else f"{family}_vision"])
    prefix = "qwen3_vl_" if qwen3 else ""
    mrope_section = list(overrides.pop("mrope_section", TINY_SIZES[prefix + "mrope_section"]))
    rope_theta = overrides.pop("rope_theta", TINY_SIZES[prefix + "rope_theta"])
    for key, value in overrides.items():
        if key.startswith("text_"):
            text[key[len("text_"):]] = value
        elif key.startswith("vision_"):
            vision[key[len("vision_"):]] = value
        else:
            raise ValueError(f"make_tiny_checkpoint: unknown override {key!r}; use text_<field>=, vision_<field>=, "
                             f"mrope_section= or rope_theta=")
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if sum(mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {mrope_section} sums to {sum(mrope_section)} but must sum to head_dim/2 = "
                         f"{head_dim // 2} (hidden_size {text['hidden_size']} / {text['num_attention_heads']} heads)")
    if family == "qwen2_vl":
        vision["hidden_size"] = text["hidden_size"]       # the merger projects straight into the LLM width
        from transformers import Qwen2VLConfig as config_class
    elif family == "qwen2_5_vl":
        vision["out_hidden_size"] = text["hidden_size"]
        from transformers import Qwen2_5_VLConfig as config_class
    elif family == "qwen3_vl":
        vision["out_hidden_size"] = text["hidden_size"]
        from transformers import Qwen3VLConfig as config_class
    else:
        vision["out_hidden_size"] = text["hidden_size"]
        from transformers import Qwen3VLMoeConfig as config_class
    vision.update(patch_size=QWEN3_PATCH_SIZE if qwen3 else PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
                  temporal_patch_size=2, in_channels=3)
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section}
    text.update(rope_parameters=dict(rope, mrope_interleaved=True) if qwen3 else rope,
                bos_token_id=TOKEN_ID["<|endoftext|>"], eos_token_id=TOKEN_ID["<|im_end|>"],
                pad_token_id=TOKEN_ID["<|endoftext|>"], tie_word_embeddings=tied)
    hf_config = config_class(
        text_config=text, vision_config=vision, tie_word_embeddings=tied,
        image_token_id=TOKEN_ID["<|image_pad|>"], video_token_id=TOKEN_ID["<|video_pad|>"],
        vision_start_token_id=TOKEN_ID["<|vision_start|>"], vision_end_token_id=TOKEN_ID["<|vision_end|>"],
        bos_token_id=TOKEN_ID["<|endoftext|>"], eos_token_id=TOKEN_ID["<|im_end|>"],
        pad_token_id=TOKEN_ID["<|endoftext|>"])
    return save_config(hf_config, out_dir)


def save_config(hf_config, out_dir, token_id=TOKEN_ID):
    """Write ``hf_config`` (float32) and a greedy generation_config.json with the Qwen chat tokens' ids in
    ``token_id``; the written config dict."""
    hf_config.dtype = "float32"
    hf_config.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": token_id["<|endoftext|>"], "pad_token_id": token_id["<|endoftext|>"],
                   "eos_token_id": [token_id["<|im_end|>"], token_id["<|endoftext|>"]], "do_sample": False},
                  f, indent=2)
    with open(os.path.join(out_dir, "config.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------------------
# model.safetensors
# ----------------------------------------------------------------------------------------------------------------

class _Init:
    """Random tensors for one checkpoint: linear weights ~ N(0, 1/fan_in), norms 1 + 0.1 N, biases 0.1 N."""

    def __init__(self, rng):
        self.rng, self.tensors = rng, {}

    def _normal(self, shape, std):
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def linear(self, name, out_features, in_features, bias):
        self.tensors[f"{name}.weight"] = self._normal((out_features, in_features), in_features ** -0.5)
        if bias:
            self.tensors[f"{name}.bias"] = self._normal((out_features,), 0.1)

    def norm(self, name, size, bias):
        self.tensors[f"{name}.weight"] = 1.0 + self._normal((size,), 0.1)
        if bias:
            self.tensors[f"{name}.bias"] = self._normal((size,), 0.1)

    def raw(self, name, shape, std):
        self.tensors[name] = self._normal(shape, std)


def _random_weights(config, family, rng, expert_layout="hub"):
    init = _Init(rng)
    if family in QWEN3:
        _qwen3_vision_weights(init, config["vision_config"])
    else:
        _vision_weights(init, config["vision_config"], family)
    text = config["text_config"]
    hidden, heads, kv_heads = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]
    qwen3 = family in QWEN3
    head_dim = text["head_dim"] if qwen3 else hidden // heads
    experts = text.get("num_local_experts", text.get("num_experts", 0))   # 5.23 writes num_local_experts
    moe_layers = [j for j in range(text["num_hidden_layers"]) if j not in (text.get("mlp_only_layers") or [])
                  and experts > 0 and (j + 1) % text.get("decoder_sparse_step", 1) == 0]
    init.raw("model.language_model.embed_tokens.weight", (text["vocab_size"], hidden), 0.25)
    for j in range(text["num_hidden_layers"]):
        layer = f"model.language_model.layers.{j}"
        init.norm(f"{layer}.input_layernorm", hidden, bias=False)
        init.linear(f"{layer}.self_attn.q_proj", heads * head_dim, hidden, bias=not qwen3)
        init.linear(f"{layer}.self_attn.k_proj", kv_heads * head_dim, hidden, bias=not qwen3)
        init.linear(f"{layer}.self_attn.v_proj", kv_heads * head_dim, hidden, bias=not qwen3)
        if qwen3:
            init.norm(f"{layer}.self_attn.q_norm", head_dim, bias=False)
            init.norm(f"{layer}.self_attn.k_norm", head_dim, bias=False)
        init.linear(f"{layer}.self_attn.o_proj", hidden, heads * head_dim, bias=False)
        init.norm(f"{layer}.post_attention_layernorm", hidden, bias=False)
        if j in moe_layers:
            _moe_weights(init, f"{layer}.mlp", experts, text, expert_layout)
            continue
        init.linear(f"{layer}.mlp.gate_proj", text["intermediate_size"], hidden, bias=False)
        init.linear(f"{layer}.mlp.up_proj", text["intermediate_size"], hidden, bias=False)
        init.linear(f"{layer}.mlp.down_proj", hidden, text["intermediate_size"], bias=False)
    init.norm("model.language_model.norm", hidden, bias=False)
    if not config.get("tie_word_embeddings", False):
        init.linear("lm_head", text["vocab_size"], hidden, bias=False)
    return init.tensors


def _vision_weights(init, vision, family):
    qwen2_vl = family == "qwen2_vl"
    width = vision["embed_dim"] if qwen2_vl else vision["hidden_size"]
    out_width = vision["hidden_size"] if qwen2_vl else vision["out_hidden_size"]
    mlp_width = width * vision["mlp_ratio"] if qwen2_vl else vision["intermediate_size"]
    merge = vision["spatial_merge_size"]
    patch = (width, vision["in_channels"], vision["temporal_patch_size"], vision["patch_size"], vision["patch_size"])
    init.raw("model.visual.patch_embed.proj.weight", patch, (np.prod(patch[1:])) ** -0.5)
    for i in range(vision["depth"]):
        block = f"model.visual.blocks.{i}"
        init.norm(f"{block}.norm1", width, bias=qwen2_vl)      # Qwen2-VL LayerNorm, Qwen2.5-VL RMSNorm
        init.norm(f"{block}.norm2", width, bias=qwen2_vl)
        init.linear(f"{block}.attn.qkv", 3 * width, width, bias=True)
        init.linear(f"{block}.attn.proj", width, width, bias=True)
        if qwen2_vl:
            init.linear(f"{block}.mlp.fc1", mlp_width, width, bias=True)
            init.linear(f"{block}.mlp.fc2", width, mlp_width, bias=True)
        else:
            init.linear(f"{block}.mlp.gate_proj", mlp_width, width, bias=True)
            init.linear(f"{block}.mlp.up_proj", mlp_width, width, bias=True)
            init.linear(f"{block}.mlp.down_proj", width, mlp_width, bias=True)
    merged = width * merge * merge
    init.norm("model.visual.merger.ln_q", width, bias=qwen2_vl)
    init.linear("model.visual.merger.mlp.0", merged, merged, bias=True)
    init.linear("model.visual.merger.mlp.2", out_width, merged, bias=True)


def _moe_weights(init, prefix, experts, text, expert_layout):
    """Router (E, C) ~ N(0, 1) / sqrt(C) (tokens spread over the experts) and stacked experts, (E, in, out) per
    projection in the hub orientation, (E, out, in) in transformers'."""
    hidden, width = text["hidden_size"], text["moe_intermediate_size"]
    init.linear(f"{prefix}.gate", experts, hidden, bias=False)
    for name, (fan_in, fan_out) in (("gate_up_proj", (hidden, 2 * width)), ("down_proj", (width, hidden))):
        shape = (experts, fan_in, fan_out) if expert_layout == "hub" else (experts, fan_out, fan_in)
        init.raw(f"{prefix}.experts.{name}", shape, fan_in ** -0.5)


def _qwen3_vision_weights(init, vision):
    width, mlp_width, out_width = vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"]
    merged = width * vision["spatial_merge_size"] ** 2
    patch = (width, vision["in_channels"], vision["temporal_patch_size"], vision["patch_size"], vision["patch_size"])
    init.raw("model.visual.patch_embed.proj.weight", patch, (np.prod(patch[1:])) ** -0.5)
    init.raw("model.visual.patch_embed.proj.bias", (width,), 0.1)
    init.raw("model.visual.pos_embed.weight", (vision["num_position_embeddings"], width), 0.5)
    for i in range(vision["depth"]):
        block = f"model.visual.blocks.{i}"
        init.norm(f"{block}.norm1", width, bias=True)
        init.norm(f"{block}.norm2", width, bias=True)
        init.linear(f"{block}.attn.qkv", 3 * width, width, bias=True)
        init.linear(f"{block}.attn.proj", width, width, bias=True)
        init.linear(f"{block}.mlp.linear_fc1", mlp_width, width, bias=True)
        init.linear(f"{block}.mlp.linear_fc2", width, mlp_width, bias=True)
    mergers = [("model.visual.merger", width)] + [(f"model.visual.deepstack_merger_list.{n}", merged)
                                                  for n in range(len(vision["deepstack_visual_indexes"]))]
    for name, norm_width in mergers:
        init.norm(f"{name}.norm", norm_width, bias=True)
        init.linear(f"{name}.linear_fc1", merged, merged, bias=True)
        init.linear(f"{name}.linear_fc2", out_width, merged, bias=True)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer, chat template, image / video processors
# ----------------------------------------------------------------------------------------------------------------

def _write_tokenizer(out_dir, chat_template, special_tokens=SPECIAL_TOKENS, tokenizer_config=None, plain_tokens=()):
    """A byte-level BPE trained on the corpus with ``special_tokens`` first (ids 0, 1, ...) and ``plain_tokens``
    added as non-special single tokens after the merges; ``tokenizer_config``: the family's keys (default Qwen2's).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS, trainer)
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in plain_tokens])
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    added = {str(index): {"content": token, "lstrip": False, "rstrip": False, "normalized": False,
                          "single_word": False, "special": True} for index, token in enumerate(special_tokens)}
    added.update({str(tokenizer.token_to_id(token)): {"content": token, "lstrip": False, "rstrip": False,
                                                      "normalized": False, "single_word": False, "special": False}
                  for token in plain_tokens})
    tokenizer_config = dict(tokenizer_config or {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 4096,
        "errors": "replace", "split_special_tokens": False, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    }, added_tokens_decoder=added)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write(chat_template)


def _write_processor(out_dir, family):
    shared = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "merge_size": MERGE_SIZE, "patch_size": PATCH_SIZE, "temporal_patch_size": 2, "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    }
    image = dict(shared, image_processor_type="Qwen2VLImageProcessor")
    video = dict(shared, video_processor_type="Qwen2VLVideoProcessor", do_sample_frames=False, min_frames=2,
                 max_frames=8, return_metadata=False, cap_pixels_per_frame=False)
    processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                       "qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}[family]
    if family in QWEN3:
        # The hub's Qwen3-VL preprocessor: 16-pixel patches, mean = std = 0.5; the video budget counts frames.
        shared.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], patch_size=QWEN3_PATCH_SIZE,
                      size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS})
        image = dict(shared, image_processor_type="Qwen2VLImageProcessor")
        video = dict(shared, video_processor_type="Qwen3VLVideoProcessor", do_sample_frames=False, fps=2,
                     min_frames=2, max_frames=8, cap_pixels_per_frame=False,
                     size={"shortest_edge": 2 * QWEN3_MIN_PIXELS, "longest_edge": 4 * QWEN3_MAX_PIXELS})
    for name, content in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                          ("processor_config.json", {"processor_class": processor_class})):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)


# ----------------------------------------------------------------------------------------------------------------
# GLM-4.1V (glm4v)
# ----------------------------------------------------------------------------------------------------------------

# GLM-4's special tokens, ids 0.. in the tiny vocabulary (the hub ids are 151329 <|endoftext|> ... 151344 <|video|>).
GLM_SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                      "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                      "<|begin_of_video|>", "<|end_of_video|>", "<|image|>", "<|video|>")
GLM_TOKEN_ID = {token: index for index, token in enumerate(GLM_SPECIAL_TOKENS)}
# GLM-4.1V-Thinking's answer markup: plain (non-special) single tokens, so decoding keeps them.
GLM_THINKING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
# The hub chat template of GLM-4.1V-9B-Thinking, verbatim (a public transcription; the wheel ships none):
# [gMASK]<sop>, then per turn "\n<|role|>\n" + content; each image / video one <|begin_of_image|><|image|>
# <|end_of_image|> / <|begin_of_video|><|video|><|end_of_video|> that the processor expands. An assistant turn has no
# end token of its own: the next <|user|> (a stop id in generation_config) ends it.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n"
    "<|begin_of_image|><|image|><|end_of_image|>\n                {%- elif item.type == 'text' %}\n{{ item.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "    {%- elif msg.role == 'assistant' %}\n        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n"
    "{{ msg.content }}\n        {%- else %}\n<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n"
    "    {%- endif %}\n{%- endfor %}\n{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Images 56x56 .. 56x84 (4..6 merged tokens): the budget counts the 2 frames an image is duplicated into (G5).
GLM_MIN_PIXELS, GLM_MAX_PIXELS = 2 * 56 * 56, 2 * 56 * 84
GLM_TINY_SIZES = {
    # head_dim 16, of which partial_rotary_factor 0.5 rotate: 4 frequencies in contiguous sections [1, 1, 2] (the
    # [8, 12, 12] shape); GQA 4 / 2.
    "text": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "mrope_section": [1, 1, 2],
    "rope_theta": 10000.0,
    # A 3x3 learned position table (image_size 42 / patch 14), smaller than every image grid; the vision MLP is
    # out_hidden_size (64) wide, the merger's SwiGLU intermediate_size (48).
    "vision": dict(depth=2, hidden_size=32, num_heads=2, image_size=42, patch_size=14, intermediate_size=48,
                   rms_norm_eps=1e-5, attention_bias=False, hidden_act="silu"),
}


# GLM-4.5V (glm4v_moe): head_dim 32 explicit (4 x 32 = 128 != hidden 64, as the real 96 x 128 vs 4096), of which
# partial_rotary_factor 0.5 rotate in NeoX halves: sections [2, 3, 3]; layer 0 dense, layers 1-2 MoE with 8 routed
# experts, top-2 and one shared expert. Routing overrides: text_n_group / text_topk_group / text_routed_scaling_factor.
GLM_MOE_TINY_SIZES = {
    "text": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5, max_position_embeddings=4096,
                 attention_bias=True, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                 moe_intermediate_size=24, first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True,
                 routed_scaling_factor=1.0),
    "mrope_section": [2, 3, 3],
}


def _make_glm4v(out_dir, tied, seed, overrides, moe=False):
    config = _write_glm4v_config(out_dir, tied, overrides, moe)
    save_file(_glm4v_weights(config, np.random.default_rng(seed), moe), os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    _write_tokenizer(out_dir, GLM_CHAT_TEMPLATE, GLM_SPECIAL_TOKENS, {
        "tokenizer_class": "TokenizersBackend", "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 4096, "split_special_tokens": False,
        "clean_up_tokenization_spaces": False, "do_lower_case": False, "padding_side": "left",
        "additional_special_tokens": list(GLM_SPECIAL_TOKENS[1:]),
    }, GLM_THINKING_TOKENS)
    shared = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "merge_size": MERGE_SIZE, "patch_size": PATCH_SIZE, "temporal_patch_size": 2, "resample": 3,
        "rescale_factor": 1 / 255,
    }
    image = dict(shared, image_processor_type="Glm4vImageProcessor",
                 size={"shortest_edge": GLM_MIN_PIXELS, "longest_edge": GLM_MAX_PIXELS})
    # the video budget counts the real frames: up to 4 frames of 56x84
    video = dict(shared, video_processor_type="Glm4vVideoProcessor", do_sample_frames=True, fps=2, max_duration=300,
                 size={"shortest_edge": GLM_MIN_PIXELS, "longest_edge": 2 * GLM_MAX_PIXELS})
    for name, content in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                          ("processor_config.json", {"processor_class": "Glm4vProcessor"})):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)
    return out_dir


def _write_glm4v_config(out_dir, tied, overrides, moe=False):
    from transformers import Glm4vConfig, Glm4vMoeConfig

    sizes = GLM_MOE_TINY_SIZES if moe else GLM_TINY_SIZES
    text, vision = dict(sizes["text"]), dict(GLM_TINY_SIZES["vision"])
    mrope_section = list(overrides.pop("mrope_section", sizes["mrope_section"]))
    rope_theta = overrides.pop("rope_theta", GLM_TINY_SIZES["rope_theta"])
    partial = overrides.pop("partial_rotary_factor", 0.5)
    for key, value in overrides.items():
        if key.startswith("text_"):
            text[key[len("text_"):]] = value
        elif key.startswith("vision_"):
            vision[key[len("vision_"):]] = value
        else:
            raise ValueError(f"make_tiny_checkpoint: unknown override {key!r}; use text_<field>=, vision_<field>=, "
                             f"mrope_section=, rope_theta= or partial_rotary_factor=")
    rotary = int((text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]) * partial)
    if sum(mrope_section) * 2 != rotary:
        raise ValueError(f"mrope_section {mrope_section} sums to {sum(mrope_section)} but must sum to the rotated "
                         f"dims / 2 = {rotary // 2} (head_dim x partial_rotary_factor {partial} / 2)")
    vision.update(out_hidden_size=text["hidden_size"], spatial_merge_size=MERGE_SIZE, temporal_patch_size=2,
                  in_channels=3)
    eos = [GLM_TOKEN_ID[t] for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    text.update(rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section,
                                 "partial_rotary_factor": partial},
                pad_token_id=GLM_TOKEN_ID["<|endoftext|>"])
    hf_config = (Glm4vMoeConfig if moe else Glm4vConfig)(
        text_config=text, vision_config=vision, tie_word_embeddings=tied,
        **{f"{name}_token_id": GLM_TOKEN_ID[f"<|{token}|>"] for name, token in (
            ("image", "image"), ("video", "video"), ("image_start", "begin_of_image"), ("image_end", "end_of_image"),
            ("video_start", "begin_of_video"), ("video_end", "end_of_video"))})
    hf_config.dtype = "float32"
    hf_config.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"pad_token_id": GLM_TOKEN_ID["<|endoftext|>"], "eos_token_id": eos, "do_sample": False}, f,
                  indent=2)
    with open(os.path.join(out_dir, "config.json")) as f:
        return json.load(f)


def _glm4v_weights(config, rng, moe=False):
    """Random GLM-4.1V tensors under transformers' names (no conversion mapping: the hub layout is the same);
    ``moe``: GLM-4.5V's LLM (two norms per layer, dense layers before ``first_k_dense_replace``, then per-expert
    routed experts as the hub files hold them, a shared expert and a non-zero fp32 ``e_score_correction_bias``)."""
    init = _Init(rng)
    vision, text = config["vision_config"], config["text_config"]
    width, out_width, context = vision["hidden_size"], vision["out_hidden_size"], vision["intermediate_size"]
    merge, side = vision["spatial_merge_size"], vision["image_size"] // vision["patch_size"]
    patch = (width, vision["in_channels"], vision["temporal_patch_size"], vision["patch_size"], vision["patch_size"])
    init.raw("model.visual.patch_embed.proj.weight", patch, (np.prod(patch[1:])) ** -0.5)
    init.raw("model.visual.patch_embed.proj.bias", (width,), 0.1)
    init.norm("model.visual.post_conv_layernorm", width, bias=False)
    init.raw("model.visual.embeddings.position_embedding.weight", (side * side, width), 0.5)
    for i in range(vision["depth"]):
        block = f"model.visual.blocks.{i}"
        init.norm(f"{block}.norm1", width, bias=False)
        init.norm(f"{block}.norm2", width, bias=False)
        init.linear(f"{block}.attn.qkv", 3 * width, width, bias=False)
        init.linear(f"{block}.attn.proj", width, width, bias=False)
        init.linear(f"{block}.mlp.gate_proj", out_width, width, bias=False)      # width out_hidden_size (G3)
        init.linear(f"{block}.mlp.up_proj", out_width, width, bias=False)
        init.linear(f"{block}.mlp.down_proj", width, out_width, bias=False)
    init.norm("model.visual.post_layernorm", width, bias=False)
    init.raw("model.visual.downsample.weight", (out_width, width, merge, merge), (width * merge * merge) ** -0.5)
    init.raw("model.visual.downsample.bias", (out_width,), 0.1)
    init.linear("model.visual.merger.proj", out_width, out_width, bias=False)
    init.norm("model.visual.merger.post_projection_norm", out_width, bias=True)
    init.linear("model.visual.merger.gate_proj", context, out_width, bias=False)
    init.linear("model.visual.merger.up_proj", context, out_width, bias=False)
    init.linear("model.visual.merger.down_proj", out_width, context, bias=False)
    hidden, heads, kv_heads = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]
    head_dim, inner = text.get("head_dim") or hidden // heads, text["intermediate_size"]
    init.raw("model.language_model.embed_tokens.weight", (text["vocab_size"], hidden), 0.25)
    for j in range(text["num_hidden_layers"]):
        layer = f"model.language_model.layers.{j}"
        norms = ("input_layernorm", "post_attention_layernorm") if moe else (
            "input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")
        for norm in norms:
            init.norm(f"{layer}.{norm}", hidden, bias=False)
        init.linear(f"{layer}.self_attn.q_proj", heads * head_dim, hidden, bias=True)
        init.linear(f"{layer}.self_attn.k_proj", kv_heads * head_dim, hidden, bias=True)
        init.linear(f"{layer}.self_attn.v_proj", kv_heads * head_dim, hidden, bias=True)
        init.linear(f"{layer}.self_attn.o_proj", hidden, heads * head_dim, bias=False)
        if moe:
            _glm4v_moe_mlp(init, f"{layer}.mlp", text, j)
            continue
        init.linear(f"{layer}.mlp.gate_up_proj", 2 * inner, hidden, bias=False)
        init.linear(f"{layer}.mlp.down_proj", hidden, inner, bias=False)
    init.norm("model.language_model.norm", hidden, bias=False)
    if not config.get("tie_word_embeddings", False):
        init.linear("lm_head", text["vocab_size"], hidden, bias=False)
    return init.tensors


def _glm4v_moe_mlp(init, prefix, text, layer):
    """GLM-4.5V layer ``layer``'s MLP: dense SwiGLU before ``first_k_dense_replace``, else the router (weight
    ~ N(0, 1/C), correction bias ~ 0.1 N in fp32), per-expert routed experts and the shared expert."""
    hidden = text["hidden_size"]
    widths = [("", text["intermediate_size"])] if layer < text["first_k_dense_replace"] else [
        *((f"experts.{e}.", text["moe_intermediate_size"]) for e in range(text["n_routed_experts"])),
        ("shared_experts.", text["moe_intermediate_size"] * text["n_shared_experts"])]
    for name, width in widths:
        init.linear(f"{prefix}.{name}gate_proj", width, hidden, bias=False)
        init.linear(f"{prefix}.{name}up_proj", width, hidden, bias=False)
        init.linear(f"{prefix}.{name}down_proj", hidden, width, bias=False)
    if layer >= text["first_k_dense_replace"]:
        init.linear(f"{prefix}.gate", text["n_routed_experts"], hidden, bias=False)
        init.raw(f"{prefix}.gate.e_score_correction_bias", (text["n_routed_experts"],), 0.1)
