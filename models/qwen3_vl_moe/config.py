"""Qwen3-VL-MoE config (HF ``Qwen3VLMoeConfig``): Qwen3-VL's vision tower and Qwen3 attention, with sparse MoE MLPs in
the layers ``i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0``."""
import dataclasses

from mmx.models.common.config import read_hf_config
from mmx.models.qwen3_vl import config as qwen3_vl

FAMILY = "qwen3_vl_moe"


def from_hf(source):
    """ModelConfig from a Qwen3-VL-MoE ``config.json`` (dict, file or checkpoint directory)."""
    raw = read_hf_config(source)
    base = qwen3_vl.from_hf(raw)
    text = raw.get("text_config") or {}
    # transformers 5.23 writes num_local_experts (its attribute_map), the hub's config.json files num_experts
    experts = text.get("num_local_experts", text.get("num_experts", 60))
    top_k = text.get("num_experts_per_tok", 4)
    if not 0 < top_k <= experts:
        raise ValueError(f"config.json: text_config.num_experts_per_tok {top_k} must be between 1 and num_experts "
                         f"{experts}")
    step, dense = text.get("decoder_sparse_step", 1), set(text.get("mlp_only_layers") or ())
    layers = base.text.num_layers
    moe_layers = tuple(j for j in range(layers) if j not in dense and experts > 0 and (j + 1) % step == 0)
    coef = float(text.get("router_aux_loss_coef", 0.001)) if text.get("output_router_logits", False) else 0.0
    text_config = dataclasses.replace(base.text, num_experts=experts, num_experts_per_tok=top_k,
                                      moe_intermediate_size=text.get("moe_intermediate_size", 1408),
                                      moe_layers=moe_layers, router_aux_loss_coef=coef)
    return dataclasses.replace(base, family=FAMILY, text=text_config)
