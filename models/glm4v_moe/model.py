"""GLM-4.5V, written once against mmx.nn / mmx.ops: GLM-4.1V's vision tower with the GLM-4.5-Air MoE LLM.

Mirrors transformers' ``models/glm4v_moe/modeling_glm4v_moe.py`` (``Glm4vMoeForConditionalGeneration``)::

    Glm4vMoeForConditionalGeneration (QwenVLModel, models/common/vlm.py)
    ├── image_encoder                          GLM-4.1V's (models/glm4v/model.py: Glm4vVisionEncoder; HF
    │                                          Glm4vMoeVisionModel is the same code)
    └── text_decoder                           the LLM (models/common/text.py): q/k/v biases, head_dim from the
        │                                      config (heads x head_dim != hidden), mRoPE (contiguous T/H/W
        │                                      sections) on the first rotary_dim dims of each head in NeoX halves,
        │                                      input_layernorm / pre_mlp_layernorm only (no sandwich norms)
        ├── layers j < first_k_dense_replace   dense SwiGLU MLP (linear_fc1 = [gate; up])
        └── the other layers' mlp              SharedExpertMoeBlock (models/common/moe.py): SigmoidRouter (float32
                                               sigmoid scores, + e_score_correction_bias for the choice only,
                                               grouped top-k, unbiased weights normalised and scaled) →
                                               ops.moe_experts over the stacked experts, + shared_experts

``forward(..., return_aux_loss=True)`` also returns transformers' load-balancing loss (its softmax over the
sigmoid router's logits, as HF computes it).
"""
from mmx.models.common.vlm import QwenVLModel
from mmx.models.glm4v.model import Glm4vVisionEncoder


class Glm4vMoeForConditionalGeneration(QwenVLModel):
    """GLM-4.5V: ``forward(input_ids, ...)`` → float32 logits (B, S, V); see QwenVLModel.forward."""

    image_encoder_class = Glm4vVisionEncoder
