"""GLM-4.5V config (HF ``Glm4vMoeConfig``): GLM-4.1V's vision tower and processor with the GLM-4.5-Air LLM: explicit
``head_dim``, q/k/v biases, two RMSNorms per layer, mRoPE on ``partial_rotary_factor`` of each head in NeoX halves,
dense layers ``j < first_k_dense_replace`` and MoE layers after them (grouped sigmoid routing with
``e_score_correction_bias``, ``n_shared_experts`` shared experts)."""

from mmx.models.common.config import ModelConfig, TextConfig, read_hf_config
from mmx.models.glm4v import config as glm4v

FAMILY = "glm4v_moe"

# transformers 5.23's Glm4vMoeConfig token defaults (GLM-4.5V); start / end ids as GLM-4.1V's.
DEFAULT_TOKEN_IDS = {"image_token_id": 151363, "video_token_id": 151364, "video_start_token_id": 151341,
                     "video_end_token_id": 151342}


def _field(source, key, where):
    return glm4v._field(source, key, where, "GLM-4.5V (model_type glm4v_moe)")


def text_config(raw):
    """TextConfig of GLM-4.5V's LLM (``text_config``; 5.23's defaults where a key is absent: partial rotary 0.5,
    sections [8, 12, 12], 128 experts top-8, one group)."""
    text = raw.get("text_config") or raw
    where = "text_config" if "text_config" in raw else "the top level"
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"config.json: {where}.rope_parameters.rope_type {rope_type!r} is not supported by mmx's "
                         f"GLM-4.5V (default mRoPE only); remove the rope scaling")
    heads, hidden = _field(text, "num_attention_heads", where), _field(text, "hidden_size", where)
    head_dim = text.get("head_dim") or hidden // heads
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.5)))
    rotary_dim = int(head_dim * partial)
    mrope = tuple(rope.get("mrope_section", (8, 12, 12)))
    if rotary_dim % 2 or sum(mrope) * 2 != rotary_dim:
        raise ValueError(f"config.json: {where}.rope_parameters.mrope_section {list(mrope)} sums to {sum(mrope)} "
                         f"but the rotated dims (head_dim {head_dim} x partial_rotary_factor {partial}) / 2 are "
                         f"{rotary_dim / 2}; fix mrope_section or partial_rotary_factor")
    layers = _field(text, "num_hidden_layers", where)
    experts, top_k = text.get("n_routed_experts", 128), text.get("num_experts_per_tok", 8)
    groups, topk_groups = text.get("n_group", 1), text.get("topk_group", 1)
    if experts % groups or experts // groups < 2 or not 0 < topk_groups <= groups:
        raise ValueError(f"config.json: {where}.n_group {groups} / topk_group {topk_groups} do not fit "
                         f"n_routed_experts {experts}: the groups must split the experts evenly, at least 2 per "
                         f"group (a group scores by its top-2 sum), and 1 <= topk_group <= n_group")
    if not 0 < top_k <= experts // groups * topk_groups:
        raise ValueError(f"config.json: {where}.num_experts_per_tok {top_k} must be between 1 and the "
                         f"{experts // groups * topk_groups} experts of the topk_group {topk_groups} kept groups")
    dense = text.get("first_k_dense_replace", 1)
    moe_layers = tuple(j for j in range(layers) if j >= dense)
    coef = float(text.get("router_aux_loss_coef", 0.0001)) if text.get("output_router_logits", False) else 0.0
    tie = raw.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False)
    width = text.get("moe_intermediate_size", 1408)
    return TextConfig(
        vocab_size=_field(text, "vocab_size", where), hidden_size=hidden,
        intermediate_size=_field(text, "intermediate_size", where), num_layers=layers, num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or heads, rms_norm_eps=text.get("rms_norm_eps", 1e-5),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))), mrope_section=mrope,
        tie_word_embeddings=bool(tie), head_dim=head_dim, attention_bias=bool(text.get("attention_bias", True)),
        rotary_dim=rotary_dim, rotary_interleaved=False, sandwich_norms=False, num_experts=experts,
        num_experts_per_tok=top_k, moe_intermediate_size=width, moe_layers=moe_layers, router_aux_loss_coef=coef,
        moe_router="sigmoid", num_expert_groups=groups, topk_groups=topk_groups,
        norm_topk_prob=bool(text.get("norm_topk_prob", True)),
        routed_scaling_factor=float(text.get("routed_scaling_factor", 1.0)),
        shared_expert_intermediate_size=width * text.get("n_shared_experts", 1))


def from_hf(source):
    """ModelConfig from a GLM-4.5V ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    text, vision = text_config(raw), glm4v.vision_config(raw.get("vision_config") or {})
    if vision.out_hidden_size != text.hidden_size:
        raise ValueError(f"config.json: vision_config.out_hidden_size {vision.out_hidden_size} must equal "
                         f"text_config.hidden_size {text.hidden_size} (the merger writes LLM embeddings)")
    ids = {key: raw.get(key, default) for key, default in DEFAULT_TOKEN_IDS.items()}
    return ModelConfig(family=FAMILY, text=text, vision=vision, image_token_id=ids["image_token_id"],
                       video_token_id=ids["video_token_id"], vision_start_token_id=-1, split_video_frames=True,
                       video_span_token_ids=(ids["video_start_token_id"], ids["video_end_token_id"]))
