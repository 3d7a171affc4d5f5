"""Parallel layouts as data: pipeline stages (which global layers and end pieces a stage's model holds) and the
launchers that start data-parallel processes.

The guides' rule (ARCHITECTURE rule 8): stage i holds ``vit_pp_layers[i]`` vision blocks then ``llm_pp_layers[i]``
LLM layers; vision must be finished before LLM layers start; the first stage also holds the patch embedding, the
projector and the token embedding; the last holds the final norm and the output layer. Layer indices are global.
"""
import os
from dataclasses import dataclass

# Each backend's launcher and the environment variables it sets to the number of processes it started.
LAUNCHERS = {"torch": ("torchrun", ("WORLD_SIZE",)), "mindspore": ("msrun", ("MS_WORKER_NUM", "RANK_SIZE"))}


def launched_world_size(backend_name):
    """Processes ``backend_name``'s launcher started (1 without a launcher). Processes started by the other
    backend's launcher are an error: they would not join one group, and each would train its own copy."""
    sizes = {name: next((int(os.environ[v]) for v in variables if os.environ.get(v)), 1)
             for name, (_, variables) in LAUNCHERS.items()}
    for other, (launcher, variables) in LAUNCHERS.items():
        if other != backend_name and sizes[other] > 1 and sizes[backend_name] <= 1:
            own_launcher = LAUNCHERS[backend_name][0]
            raise RuntimeError(f"{'/'.join(variables)}={sizes[other]}: {launcher} started these processes, but the "
                               f"{backend_name} backend joins {own_launcher}'s; launch with {own_launcher} "
                               f"(examples/launch.sh {backend_name}) or use --backend {other}")
    return sizes[backend_name]


@dataclass(frozen=True)
class Stage:
    """What one pipeline stage's model holds. ``Stage.full(v, l)`` is the whole model (PP = 1)."""

    vision_layers: tuple      # global vision block indices held by this stage
    llm_layers: tuple         # global LLM layer indices held by this stage
    first: bool               # holds the patch embedding, the projector and the token embedding
    last: bool                # holds the final norm and the output layer; with tied embeddings a last stage that
                              # is not also first holds a copy of the embedding as text_decoder.output_layer.weight

    @classmethod
    def full(cls, num_vision_layers, num_llm_layers):
        return cls(tuple(range(num_vision_layers)), tuple(range(num_llm_layers)), True, True)


def pipeline_stages(vit_pp_layers, llm_pp_layers):
    """One :class:`Stage` per pipeline stage from the guides' per-stage layer counts (validated lists).

    ``pipeline_stages([2, 0], [1, 3])`` → stage 0 holds vision blocks 0-1 and LLM layer 0 (+ embeddings and
    projector), stage 1 holds LLM layers 1-3 (+ final norm and output layer).
    """
    stages, vision_start, llm_start, count = [], 0, 0, len(llm_pp_layers)
    for index, (vision, llm) in enumerate(zip(vit_pp_layers, llm_pp_layers)):
        stages.append(Stage(tuple(range(vision_start, vision_start + vision)),
                            tuple(range(llm_start, llm_start + llm)), index == 0, index == count - 1))
        vision_start, llm_start = vision_start + vision, llm_start + llm
    return stages
