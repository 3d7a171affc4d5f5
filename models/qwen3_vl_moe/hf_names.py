"""Qwen3-VL-MoE: the HF ↔ mm name table (format: ``models/qwen2_vl/hf_names.py``): Qwen3-VL's vision and attention
rows; dense layers ``{k}`` keep the SwiGLU MLP rows, MoE layers ``{m}`` have a router and stacked experts.

Stacked experts: the mm layout is (E, in, out) per projection, what grouped GEMM consumes — ``linear_fc1`` (E, C, 2F)
with [gate | up] along the last dim, ``linear_fc2`` (E, F, C) — which is also the orientation of the hub's
safetensors (``gate_up_proj`` (E, C, 2F), ``down_proj`` (E, F, C)). transformers 5.23 keeps them transposed in memory
and its ``save_pretrained`` writes that orientation ((E, 2F, C), (E, C, F)). :func:`inspect` decides each
projection's orientation from the tensor shapes against the config, refuses the case the shapes cannot tell (a
square pair of trailing dims) unless told, and records the choice in the metadata (``expert_layout_gate_up``,
``expert_layout_down``), so ``mm_to_hf`` writes back what it read.
"""
from mmx.models.qwen2_vl.hf_names import (HF_LLM_LAYER, LLM_LAYER, OUTPUT_LAYER, _linear,  # noqa: F401
                                          language_model)
from mmx.models.qwen2_vl.hf_names import dimensions as _dimensions
from mmx.models.qwen3_vl.hf_names import LEGACY_PREFIXES, VISION  # noqa: F401

MOE_LAYER, HF_MOE_LAYER = LLM_LAYER.replace("{j}", "{m}") + "mlp.", HF_LLM_LAYER.replace("{j}", "{m}") + "mlp."
EXPERT_LAYOUTS = ("hub", "transformers")

TABLE = (
    *VISION,
    *language_model(qkv_bias=False, qk_norm=True, dense_mlp="{k}"),
    (MOE_LAYER + "router.weight", HF_MOE_LAYER + "gate.weight", "rename", {}),
    (MOE_LAYER + "experts.linear_fc1.weight", HF_MOE_LAYER + "experts.gate_up_proj", "stacked_experts",
     {"layout": "expert_layout_gate_up"}),
    (MOE_LAYER + "experts.linear_fc2.weight", HF_MOE_LAYER + "experts.down_proj", "stacked_experts",
     {"layout": "expert_layout_down"}),
    OUTPUT_LAYER,
)


def dimensions(config):
    """Qwen2-VL's numbers plus ``moe_layers``, ``moe_intermediate_size`` and ``hidden_size`` (the expert shapes)."""
    from mmx.models import config_from_hf

    text = config_from_hf(config).text
    return {**_dimensions(config), "moe_layers": list(text.moe_layers), "hidden_size": text.hidden_size,
            "moe_intermediate_size": text.moe_intermediate_size}


def inspect(dims, shapes, source, expert_layout=None):
    """``dims`` plus the orientation of each stacked-expert projection, read from the HF tensor ``shapes``
    ({HF name: shape}) of ``source`` (for messages). ``expert_layout`` ("hub" or "transformers") decides a
    projection whose shape fits both orientations."""
    experts, hidden, width = dims["num_experts"], dims["hidden_size"], dims["moe_intermediate_size"]
    wanted = {"gate_up": ("gate_up_proj", (experts, hidden, 2 * width)),
              "down": ("down_proj", (experts, width, hidden))}
    found = dict(dims)
    for projection, (suffix, hub) in wanted.items():
        transposed = (hub[0], hub[2], hub[1])
        layouts = set()
        for layer in dims["moe_layers"]:
            name = HF_MOE_LAYER.format(m=layer) + "experts." + suffix
            shape = tuple(shapes.get(name, ()))
            fits = [layout for layout, want in zip(EXPERT_LAYOUTS, (hub, transposed)) if shape == want]
            if not fits:
                raise ValueError(f"{source}: {name} has shape {list(shape)}, but config.json's num_experts "
                                 f"{experts}, hidden_size {hidden} and moe_intermediate_size {width} give "
                                 f"{list(hub)} (hub files) or {list(transposed)} (transformers' save_pretrained)")
            layouts.add(fits[0] if len(fits) == 1 else None)
        if None in layouts:
            if expert_layout not in EXPERT_LAYOUTS:
                raise ValueError(f"{source}: the {suffix} tensors have shape {list(hub)}, which fits both the hub "
                                 f"orientation (E, in, out) and transformers' (E, out, in) because their last two "
                                 f"dims are equal; pass --expert-layout hub (files from the hub) or --expert-layout "
                                 f"transformers (written by transformers' save_pretrained)")
            layouts = (layouts - {None}) | {expert_layout}
        if len(layouts) > 1:
            raise ValueError(f"{source}: the {suffix} tensors mix orientations across layers ({sorted(layouts)}); "
                             f"re-save the checkpoint with one")
        found[f"expert_layout_{projection}"] = layouts.pop() if layouts else "hub"
    return found
