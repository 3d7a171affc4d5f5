"""Qwen3-VL-MoE, written once against mmx.nn / mmx.ops: Qwen3-VL with sparse MoE MLPs in its LLM.

Mirrors transformers' ``models/qwen3_vl_moe/modeling_qwen3_vl_moe.py`` (``Qwen3VLMoeForConditionalGeneration``)::

    Qwen3VLMoeForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                        Qwen3-VL's (models/qwen3_vl/model.py): learned position table,
    │                                        LayerNorm blocks, merger + deepstack mergers
    └── text_decoder                         the Qwen3 LLM (models/common/text.py); layer j's mlp is
                                             a SparseMoeBlock (models/common/moe.py: router → top-k → grouped expert
                                             GEMMs through ops.moe_experts) when j is in config.text.moe_layers,
                                             else the dense SwiGLU MLP (mlp_only_layers / decoder_sparse_step)

``forward(..., return_aux_loss=True)`` also returns transformers' load-balancing loss over the MoE layers.
"""
from mmx.models.common.vlm import QwenVLModel
from mmx.models.qwen3_vl.model import Qwen3VisionEncoder


class Qwen3VLMoeForConditionalGeneration(QwenVLModel):
    """Qwen3-VL-MoE: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Qwen3VisionEncoder
