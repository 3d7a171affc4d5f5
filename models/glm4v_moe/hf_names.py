"""GLM-4.5V: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``): GLM-4.1V's vision rows, GLM-4.5V's
LLM.

The LLM follows the GLM-4.1V names (``models/glm4v/hf_names.py``) without the sandwich norms; the dense layers
``{k}`` (``j < first_k_dense_replace``) fuse HF's separate ``gate_proj`` / ``up_proj`` into ``mlp.linear_fc1``.
In the MoE layers ``{m}``: the router ``mlp.gate`` is ``mlp.router`` (its ``e_score_correction_bias`` stays
float32 whatever ``--dtype`` says, as transformers keeps it), the shared expert ``mlp.shared_experts`` fuses its
gate / up, and the hub's per-expert linears ``mlp.experts.{e}.{gate,up,down}_proj.weight`` ((F, C), (F, C), (C, F),
``{e}`` = 0 .. E-1) are stacked into the mm layout grouped GEMM wants — ``experts.linear_fc1`` (E, C, 2F) =
[gate^T | up^T], ``experts.linear_fc2`` (E, F, C) — and split back into the same bytes by ``mm_to_hf``.

Tensors of LLM layers past ``num_hidden_layers`` (GLM-4.5V's multi-token-prediction layer 46, which transformers
drops on load too) are skipped with a note (:func:`skipped`).
"""
import re

from mmx.models.glm4v.hf_names import HF_ATTENTION, ATTENTION, vision_rows
from mmx.models.qwen2_vl.hf_names import HF_LLM_LAYER, LLM_LAYER, LLM_QKV, OUTPUT_LAYER, _linear  # noqa: F401
from mmx.models.qwen3_vl_moe.hf_names import dimensions  # noqa: F401 - moe_layers, hidden / expert widths

DENSE, HF_DENSE = LLM_LAYER.replace("{j}", "{k}") + "mlp.", HF_LLM_LAYER.replace("{j}", "{k}") + "mlp."
MOE, HF_MOE = LLM_LAYER.replace("{j}", "{m}") + "mlp.", HF_LLM_LAYER.replace("{j}", "{m}") + "mlp."


def _swiglu(mm, hf):
    """A SwiGLU MLP with separate HF gate / up / down: linear_fc1 = [gate; up], linear_fc2 = down."""
    return [(mm + "linear_fc1.weight", (hf + "gate_proj.weight", hf + "up_proj.weight"), "fuse_gate_up", {}),
            *_linear(mm + "linear_fc2", hf + "down_proj", bias=False)]


TABLE = (
    *vision_rows(),
    ("text_decoder.embedding.word_embeddings.weight", "model.language_model.embed_tokens.weight", "rename", {}),
    *_linear(LLM_LAYER + "input_layernorm", HF_LLM_LAYER + "input_layernorm", bias=False),
    *[(ATTENTION + f"linear_qkv.{kind}", tuple(HF_ATTENTION + f"{p}_proj.{kind}" for p in "qkv"), "fuse_qkv",
       LLM_QKV) for kind in ("weight", "bias")],
    *_linear(ATTENTION + "linear_proj", HF_ATTENTION + "o_proj", bias=False),
    *_linear(LLM_LAYER + "pre_mlp_layernorm", HF_LLM_LAYER + "post_attention_layernorm", bias=False),
    *_swiglu(DENSE, HF_DENSE),
    (MOE + "router.weight", HF_MOE + "gate.weight", "rename", {}),
    (MOE + "router.e_score_correction_bias", HF_MOE + "gate.e_score_correction_bias", "float32", {}),
    (MOE + "experts.linear_fc1.weight", (HF_MOE + "experts.{e}.gate_proj.weight", HF_MOE + "experts.{e}.up_proj.weight"),
     "per_expert_gate_up", {}),
    (MOE + "experts.linear_fc2.weight", HF_MOE + "experts.{e}.down_proj.weight", "per_expert_down",
     {}),
    *_swiglu(MOE + "shared_experts.", HF_MOE + "shared_experts."),
    *_linear("text_decoder.decoder.final_layernorm", "model.language_model.norm", bias=False),
    OUTPUT_LAYER,
)

LEGACY_PREFIXES = ()

_LLM_LAYER_INDEX = re.compile(r"^model\.language_model\.layers\.(\d+)\.")


def skipped(name, dims):
    """Why the HF tensor ``name`` is left out (None: it is not): an LLM layer past num_hidden_layers (the MTP
    layer of GLM-4.5V, ``model.language_model.layers.46.*``)."""
    found = _LLM_LAYER_INDEX.match(name)
    if found and int(found.group(1)) >= dims["llm_layers"]:
        return f"LLM layer {found.group(1)} is past num_hidden_layers {dims['llm_layers']} (multi-token prediction)"
    return None
