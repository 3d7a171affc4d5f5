"""Pipeline stages as data: which global layers and which end pieces a stage's model holds.

The guides' rule (ARCHITECTURE rule 8): stage i holds ``vit_pp_layers[i]`` vision blocks then ``llm_pp_layers[i]``
LLM layers; vision must be finished before LLM layers start; the first stage also holds the patch embedding, the
projector and the token embedding; the last holds the final norm and the output layer. Layer indices are global.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """What one pipeline stage's model holds. ``Stage.full(v, l)`` is the whole model (PP = 1)."""

    vision_layers: tuple      # global vision block indices held by this stage
    llm_layers: tuple         # global LLM layer indices held by this stage
    first: bool               # holds the patch embedding, the projector and the token embedding
    last: bool                # holds the final norm and the output layer (tied: a copy of the embedding)

    @classmethod
    def full(cls, num_vision_layers, num_llm_layers):
        return cls(tuple(range(num_vision_layers)), tuple(range(num_llm_layers)), True, True)
