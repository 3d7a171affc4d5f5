"""Plain-value configs of the Qwen-VL families, read from a Hugging Face ``config.json`` (stdlib json only).

Both layouts are read: transformers ≥ 4.52 nests the LLM under ``text_config`` with ``rope_parameters``; older hub
files keep the LLM fields at the top level with ``rope_scaling`` / ``rope_theta``.
"""
import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TextConfig:
    """The Qwen2 LLM with multimodal RoPE."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple     # (t, h, w) frequencies per axis, summing to head_dim / 2
    tie_word_embeddings: bool
    head_dim: int = None             # Qwen3: an explicit config value (heads * head_dim may differ from hidden)
    attention_bias: bool = True      # q/k/v biases (Qwen2: yes; Qwen3: no)
    qk_norm: bool = False            # Qwen3: RMSNorm over head_dim of each query / key head, before RoPE
    mrope_interleaved: bool = False  # Qwen3-VL: frequencies T H W T H W ... instead of contiguous bands
    rotary_dim: int = None           # GLM: the first head_dim * partial_rotary_factor dims rotate (None: all)
    rotary_interleaved: bool = False  # GLM-4.1V: GPT-J pairs (x0, x1), (x2, x3), ... instead of rotate-half
    sandwich_norms: bool = False     # GLM-4: RMSNorms after attention and after the MLP, before each residual add
    num_experts: int = 0             # MoE (Qwen3-VL-MoE): routed experts per MoE layer
    num_experts_per_tok: int = 0     # ... top-k experts per token
    moe_intermediate_size: int = 0   # ... each expert's SwiGLU width
    moe_layers: tuple = ()           # ... global indices of the MoE layers (the others keep the dense MLP)
    router_aux_loss_coef: float = 0.0  # the checkpoint's load-balancing loss weight when it asks for the loss
                                       # (HF output_router_logits), else 0
    moe_router: str = "softmax"      # "softmax" (Qwen3-VL-MoE) or "sigmoid" (GLM-4.5V: fp32 sigmoid scores, a
                                     # correction bias for the choice only, grouped top-k, shared experts)
    num_expert_groups: int = 1       # sigmoid router: experts in n_group groups, the topk_groups best groups ...
    topk_groups: int = 1             # ... (by their top-2 score sum) hold the chosen experts
    norm_topk_prob: bool = True      # sigmoid router: the K weights renormalised to sum 1 (+ 1e-20)
    routed_scaling_factor: float = 1.0  # sigmoid router: the weights' final scale
    shared_expert_intermediate_size: int = 0  # GLM-4.5V: a dense SwiGLU of this width beside the routed experts

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower; the fields one family does not use keep their defaults."""

    depth: int
    hidden_size: int          # width of the vision blocks (Qwen2-VL ``embed_dim``)
    intermediate_size: int    # MLP width (Qwen2-VL: embed_dim * mlp_ratio)
    num_heads: int
    out_hidden_size: int      # the projector's output = the LLM width
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    spatial_merge_size: int
    rope_theta: float
    hidden_act: str
    window_size: int = 0                 # Qwen2.5-VL window attention (pixels)
    fullatt_block_indexes: tuple = ()    # Qwen2.5-VL blocks that attend over the whole frame
    tokens_per_second: int = None        # Qwen2.5-VL video temporal positions; None = Qwen2-VL (1 per frame)
    patch_embed_bias: bool = False       # Qwen3-VL: the patch Conv3d has a bias
    num_position_embeddings: int = 0     # Qwen3-VL: a learned (side x side) position table, resampled per image
    deepstack_visual_indexes: tuple = () # Qwen3-VL: blocks whose outputs also feed the LLM's first layers
    rms_norm_eps: float = 1e-6           # GLM-4.1V: its vision RMSNorms' eps (config.json; Qwen's are fixed)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    family: str               # "qwen2_vl" | "qwen2_5_vl" | "qwen3_vl" | "glm4v" | ...
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    split_video_frames: bool = False     # Qwen3-VL: each temporal patch of a video is its own placeholder run
                                         # (a text timestamp before each), so positions take one grid row per run
    video_span_token_ids: tuple = ()     # GLM: (<|begin_of_video|>, <|end_of_video|>) ids; video frames are image
                                         # tokens between them (HF Glm4vProcessor.create_mm_token_type_ids)
    positions_1d: bool = False           # InternVL: plain 1-D RoPE, all three rows the token's index in its sample

    # rope_index reads these (and split_video_frames) from the config it is given
    @property
    def spatial_merge_size(self):
        return self.vision.spatial_merge_size

    @property
    def tokens_per_second(self):
        return self.vision.tokens_per_second


def read_hf_config(source):
    """The raw dict of ``source``: a dict, a ``config.json`` path, or a checkpoint directory."""
    if isinstance(source, dict):
        return source
    path = os.path.join(source, "config.json") if os.path.isdir(source) else source
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json at {path}: pass a Hugging Face checkpoint directory")
    with open(path) as f:
        return json.load(f)


def _field(source, key, where):
    if key not in source:
        raise ValueError(f"config.json: {where} has no {key!r}; is this a Qwen2-VL / Qwen2.5-VL config?")
    return source[key]


def text_config(raw, qwen3=False):
    """TextConfig from a Qwen-VL config dict (nested ``text_config`` or the older flat layout).

    ``qwen3``: the Qwen3 LLM (explicit ``head_dim``, q/k norms, no attention biases, HF's default sections
    [24, 20, 20]) with interleaved mRoPE: transformers 5.23's ``Qwen3VLTextRotaryEmbedding`` always interleaves,
    whatever ``rope_parameters.mrope_interleaved`` says, so mmx does too.
    """
    text = raw.get("text_config") or raw
    where = "text_config" if "text_config" in raw else "the top level"
    rope = text.get("rope_parameters") or text.get("rope_scaling") or raw.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta", raw.get("rope_theta", 1000000.0)))
    heads = _field(text, "num_attention_heads", where)
    hidden = _field(text, "hidden_size", where)
    head_dim = (text.get("head_dim") or hidden // heads) if qwen3 else hidden // heads
    mrope = tuple(rope.get("mrope_section", (24, 20, 20)) if qwen3 else
                  _field(rope, "mrope_section", f"{where}.rope_parameters"))
    if sum(mrope) * 2 != head_dim:
        raise ValueError(f"config.json: mrope_section {list(mrope)} sums to {sum(mrope)} but head_dim/2 is "
                         f"{head_dim // 2}; fix rope_parameters.mrope_section")
    tie = raw.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False)
    bias = bool(text.get("attention_bias", False)) if qwen3 else True
    if qwen3 and bias:
        raise ValueError(f"config.json: {where}.attention_bias is true; mmx's Qwen3 LLM has no attention biases "
                         f"(no published Qwen3-VL checkpoint uses them); set it to false")
    return TextConfig(
        vocab_size=_field(text, "vocab_size", where), hidden_size=hidden,
        intermediate_size=_field(text, "intermediate_size", where),
        num_layers=_field(text, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or heads, rms_norm_eps=text.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), mrope_section=mrope, tie_word_embeddings=bool(tie), head_dim=head_dim,
        attention_bias=bias, qk_norm=qwen3, mrope_interleaved=qwen3)


def vision_rope_theta(vision):
    return float((vision.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def model_config(raw, family, vision, text=None, split_video_frames=False):
    """ModelConfig for ``family`` from the raw dict and that family's VisionConfig (and TextConfig, default the
    Qwen2 LLM's)."""
    return ModelConfig(family=family, text=text or text_config(raw), vision=vision,
                       image_token_id=_field(raw, "image_token_id", "the top level"),
                       video_token_id=_field(raw, "video_token_id", "the top level"),
                       vision_start_token_id=raw.get("vision_start_token_id", -1),
                       split_video_frames=split_video_frames)
