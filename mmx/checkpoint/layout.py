"""Parallel layouts of an mm checkpoint: parsing the guides' options, validating them, naming rank directories.

A :class:`Layout` is ``tp_size``, ``ep_size`` and the per-stage layer counts ``vit_pp_layers`` /
``llm_pp_layers`` (their length is the pipeline size). Validation uses only the model's numbers (from config.json
or checkpoint metadata), never a tensor, and every error states the rule and the numbers.

Directories: ``{mm_dir}/{release | iter_0000100}/mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model.safetensors``, the
``_{pp:03d}`` part only when PP > 1 and ``_{ep:03d}`` only when EP > 1 (Megatron's naming).
"""
import json
import re
from dataclasses import dataclass

from mmx.parallel import pipeline_stages

SHARD_FILE = "model.safetensors"


class LayoutError(ValueError):
    """A parallel layout that does not fit the model; the message states the rule, the numbers and a fix."""


def parse_layers(text, option):
    """'5,12,12,11', '[5,12,12,11]' or the guides' '[[5,12,12,11]]' → (5, 12, 12, 11)."""
    if text is None or isinstance(text, (list, tuple)):
        return None if text is None else tuple(int(v) for v in text)
    cleaned = text.strip()
    if not re.fullmatch(r"\[*\s*-?\d+(\s*,\s*-?\d+)*\s*\]*", cleaned):
        raise LayoutError(f"{option} {text!r}: expected comma-separated layer counts, e.g. 5,12,12,11 or "
                          f"[[5,12,12,11]]")
    return tuple(int(v) for v in re.findall(r"-?\d+", cleaned))


def iteration_dir_name(iteration):
    """'release' or an int → 'release' / 'iter_0000100'."""
    if iteration == "release":
        return "release"
    return f"iter_{int(iteration):07d}"


@dataclass(frozen=True)
class Layout:
    """tp_size × pipeline stages (vit_pp_layers[i] vision blocks then llm_pp_layers[i] LLM layers) × ep_size."""

    vit_pp_layers: tuple
    llm_pp_layers: tuple
    tp_size: int = 1
    ep_size: int = 1

    @classmethod
    def build(cls, dims, plan, tp_size=1, ep_size=1, vit_pp_layers=None, llm_pp_layers=None):
        """A validated layout for a model with ``dims`` (hf_names.dimensions) and ``plan`` (the model's plan.py);
        the layer lists may be strings or omitted.

        Omitted lists mean one stage; an omitted ``vit_pp_layers`` with several LLM stages puts every vision block
        on the first stage (the guides' usual [24,0,0,0]).
        """
        vit = parse_layers(vit_pp_layers, "--vit-pp-layers")
        llm = parse_layers(llm_pp_layers, "--llm-pp-layers")
        if llm is None and vit is not None and len(vit) > 1:
            raise LayoutError(f"--vit-pp-layers {list(vit)} has {len(vit)} stages but --llm-pp-layers is missing: "
                              f"give both lists, one entry per pipeline stage")
        llm = llm or (dims["llm_layers"],)
        vit = vit or (dims["vision_layers"],) + (0,) * (len(llm) - 1)
        layout = cls(vit, llm, int(tp_size), int(ep_size))
        layout.validate(dims, plan)
        return layout

    @classmethod
    def from_dict(cls, data):
        return cls(tuple(data["vit_pp_layers"]), tuple(data["llm_pp_layers"]), data["tp_size"], data["ep_size"])

    def to_dict(self):
        return {"tp_size": self.tp_size, "pp_size": self.pp_size, "ep_size": self.ep_size,
                "vit_pp_layers": list(self.vit_pp_layers), "llm_pp_layers": list(self.llm_pp_layers)}

    @property
    def pp_size(self):
        return len(self.llm_pp_layers)

    def validate(self, dims, plan):
        """Raise LayoutError unless this layout fits the model numbers ``dims`` and ``plan.TP_DIVIDES``."""
        vit, llm = list(self.vit_pp_layers), list(self.llm_pp_layers)
        for option, size in (("tp_size", self.tp_size), ("ep_size", self.ep_size)):
            if size < 1:
                raise LayoutError(f"{option} is {size}; it must be at least 1")
        if len(vit) != len(llm):
            raise LayoutError(f"vit_pp_layers {vit} has {len(vit)} entries but llm_pp_layers {llm} has {len(llm)}: "
                              f"both lists need one entry per pipeline stage (pp size)")
        if min(vit + llm) < 0:
            raise LayoutError(f"layer counts must not be negative: vit_pp_layers {vit}, llm_pp_layers {llm}")
        for option, counts, key, what in (("llm_pp_layers", llm, "llm_layers", "LLM layers"),
                                          ("vit_pp_layers", vit, "vision_layers", "vision blocks")):
            if sum(counts) != dims[key]:
                raise LayoutError(f"{option} {counts} sums to {sum(counts)} but the model has {dims[key]} {what}: "
                                  f"the counts must add up to the model depth")
        for stage, (vision, text) in enumerate(zip(vit, llm)):
            if vision + text == 0:
                raise LayoutError(f"pipeline stage {stage} holds no layers (vit_pp_layers {vit}, llm_pp_layers "
                                  f"{llm}): every stage needs at least one layer; use fewer stages")
        llm_started = next(stage for stage, text in enumerate(llm) if text)
        late = [stage for stage, vision in enumerate(vit) if vision and stage > llm_started]
        if late:
            raise LayoutError(f"vit_pp_layers {vit} puts vision blocks on stage {late[0]} after LLM layers started "
                              f"on stage {llm_started} (llm_pp_layers {llm}): vision must be finished before LLM "
                              f"layers start, e.g. vit_pp_layers {[dims['vision_layers']] + [0] * (len(vit) - 1)}")
        if "deepstack_on_vision_stage" in plan.PIPELINE.get("rules", ()):
            _check_deepstack(vit, llm, len(dims.get("deepstack_visual_indexes", ())))
        if "vision_on_first_stage" in plan.PIPELINE.get("rules", ()) and any(vit[1:]):
            raise LayoutError(f"vit_pp_layers {vit} puts vision blocks on stage "
                              f"{next(s for s, v in enumerate(vit) if v and s)}, but this model's vision tower "
                              f"ends in norm → downsample → projector on the first stage (rule "
                              f"vision_on_first_stage): put all {dims['vision_layers']} vision blocks on stage 0, "
                              f"e.g. vit_pp_layers {[dims['vision_layers']] + [0] * (len(vit) - 1)}")
        for key, what in plan.TP_DIVIDES.items():
            if dims[key] % self.tp_size:
                raise LayoutError(f"tp_size {self.tp_size} does not divide the {what} ({key} = {dims[key]}): "
                                  f"tensor parallelism needs whole heads and equal vocabulary slices per rank; "
                                  f"choose a tp_size that divides {dims[key]}")
        experts = dims.get("num_experts", 0)
        if self.ep_size > 1 and (experts == 0 or experts % self.ep_size):
            raise LayoutError(f"ep_size {self.ep_size} does not divide the number of experts ({experts}): "
                              + ("this model has no experts, use ep_size 1" if experts == 0 else
                                 f"choose an ep_size that divides {experts}"))

    def stages(self):
        return pipeline_stages(self.vit_pp_layers, self.llm_pp_layers)

    def rank_dir(self, tp, pp, ep=0):
        """mp_rank_{tp:02d}, then _{pp:03d} when PP > 1 and _{ep:03d} when EP > 1."""
        name = f"mp_rank_{tp:02d}"
        if self.pp_size > 1:
            name += f"_{pp:03d}"
        if self.ep_size > 1:
            name += f"_{ep:03d}"
        return name

    def ranks(self):
        """Every (tp, pp, ep) rank in directory order."""
        return [(tp, pp, ep) for pp in range(self.pp_size) for tp in range(self.tp_size)
                for ep in range(self.ep_size)]


def _check_deepstack(vit, llm, levels):
    """Qwen3-VL: LLM layers 0 .. levels-1 add the deepstack features, so they must sit on the stage where the vision
    tower finishes (stages before it hold vision blocks only, so that stage needs at least ``levels`` LLM layers)."""
    if not levels:
        return
    vision_end = max(stage for stage, vision in enumerate(vit) if vision)
    if llm[vision_end] >= levels:
        return
    fixed, need = list(llm), levels - llm[vision_end]
    for stage in range(vision_end + 1, len(fixed)):      # later stages hold no vision: each keeps one LLM layer
        moved = max(min(need, fixed[stage] - 1), 0)
        fixed[stage], fixed[vision_end], need = fixed[stage] - moved, fixed[vision_end] + moved, need - moved
    example = f", e.g. llm_pp_layers {fixed}" if need == 0 else ""
    raise LayoutError(f"llm_pp_layers {llm} puts LLM layers {llm[vision_end]}..{levels - 1} on a later stage than "
                      f"the vision tower (which finishes on stage {vision_end}, vit_pp_layers {vit}), but layers "
                      f"0..{levels - 1} receive its {levels} deepstack feature levels: give stage {vision_end} at "
                      f"least {levels} LLM layers{example}")


def stored_name(name, stage, plan, tied):
    """The name under which pipeline ``stage`` (a Stage) holds whole-model tensor ``name``, or None.

    Always ``name`` itself, except the tied embedding's copy on a last stage that is not the first, which is
    stored under the output layer's name (``plan.PIPELINE["tied_copy"]``).
    """
    pipeline = plan.PIPELINE
    for key, field in (("vision_layer", "vision_layers"), ("llm_layer", "llm_layers")):
        prefix = pipeline[key].split("{")[0]
        if name.startswith(prefix):
            return name if int(name[len(prefix):].split(".", 1)[0]) in getattr(stage, field) else None
    embedding, copy = pipeline["tied_copy"]
    if tied and name == embedding and stage.last and not stage.first:
        return copy
    if name.startswith(pipeline["first_stage"]):
        return name if stage.first else None
    if name.startswith(pipeline["last_stage"]):
        return name if stage.last else None
    raise LayoutError(f"tensor {name!r} matches no pipeline rule of the model's plan (PIPELINE in plan.py)")


def placements(name, stages, plan, tied):
    """[(stage index, stored name)] of every pipeline stage holding whole-model tensor ``name``."""
    found = [(index, stored_name(name, stage, plan, tied)) for index, stage in enumerate(stages)]
    return [(index, stored) for index, stored in found if stored is not None]


def read_json(path, what):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {what}") from None
