"""LoRA for every mmx family: ``training.lora`` → adapters on the model's Linears, named by the family's HF table.

The adapter layer itself is ``mmx.nn.lora`` (framework-free). This module decides *where* adapters go and how they
are named outside mmx:

- **Targets** (``target_modules``) are matched as PEFT matches them, against the HF module names users know
  (``q_proj``, ``model.visual.blocks.0.attn.qkv``) and against mm module names (``linear_qkv``,
  ``text_decoder.decoder.layers.0.mlp.linear_fc1``): a list entry matches a name equal to it or ending in
  ``.<entry>``; a string is a regex that must match a whole name; ``all-linear`` is every Linear except the output
  layer (PEFT's definition: every ``nn.Linear`` but the output embedding). An HF name selects that piece of a fused
  mm Linear (``q_proj`` and ``v_proj`` put adapters on the q and v rows of ``linear_qkv`` only); an mm name selects
  all of its pieces. Modules frozen by the model's freeze flags (``model.image_encoder.vision_encoder.freeze``, ...)
  get no adapters, so ``all-linear`` with a frozen vision encoder adapts the LLM and the projector only.
- **Pieces** come from the family's name table (``models/<family>/hf_names.py``): an mm Linear's row lists its HF
  projections and the transform that fuses them, and the transform applied to row indices gives the rows that place
  each piece's output (``mmx.nn.lora.add_lora``). So the mapping to PEFT's names is the converter's, not a list.
- **modules_to_save** (e.g. ``lm_head``, ``embed_tokens``, or mm names) train whole, as PEFT's ``modules_to_save``.
  Everything else is frozen: only adapters (+ modules_to_save) get gradients and AdamW state.

``adapter_tensors`` / ``peft_state`` / ``from_peft_state`` move adapters between mm names
(``<mm linear>.lora.<piece>.lora_A``) and PEFT's (``base_model.model.<hf module>.lora_A.weight``).
"""
import difflib
import hashlib
import json
import os
import re

import numpy as np

from mmx import nn
from mmx.train.config import ConfigError

LORA_DEFAULTS = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": "all-linear",
    "modules_to_save": [],
    "init_from": None,     # a PEFT adapter directory or an mmx LoRA checkpoint to continue training from
}
ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "text_decoder.output_layer"
# mm Linears whose HF module is no nn.Linear (transformers' MoE routers hold a bare weight): PEFT cannot adapt them,
# so neither does mmx (and all-linear leaves them out, as PEFT's does)
NOT_HF_LINEAR = (".mlp.router",)
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRAConfigError(ConfigError):
    """A ``training.lora`` setting that cannot work; the message names the key and the fix."""


def lora_config(given, where="training.lora"):
    """``given`` (the config's ``training.lora`` mapping) merged over LORA_DEFAULTS and checked."""
    if not isinstance(given, dict):
        raise LoRAConfigError(f"{where} must be a mapping like {{rank: 8, alpha: 16, target_modules: all-linear}}, "
                              f"got {given!r}")
    for key in given:
        if key not in LORA_DEFAULTS:
            close = difflib.get_close_matches(key, LORA_DEFAULTS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(LORA_DEFAULTS)}"
            raise LoRAConfigError(f"unknown key {where}.{key}{hint}")
    config = dict(LORA_DEFAULTS, **given)
    if not isinstance(config["rank"], int) or config["rank"] < 1:
        raise LoRAConfigError(f"{where}.rank {config['rank']!r}: use a positive integer (8, 16, 64, ...)")
    if not isinstance(config["alpha"], (int, float)) or config["alpha"] <= 0:
        raise LoRAConfigError(f"{where}.alpha {config['alpha']!r}: use a positive number (PEFT's lora_alpha; "
                              f"the update is scaled by alpha / rank)")
    if not isinstance(config["dropout"], (int, float)) or not 0 <= config["dropout"] < 1:
        raise LoRAConfigError(f"{where}.dropout {config['dropout']!r}: use a probability in [0, 1) (PEFT's "
                              f"lora_dropout, e.g. 0.05)")
    targets = config["target_modules"]
    if isinstance(targets, str):
        targets = targets.strip()
    elif not (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)):
        raise LoRAConfigError(f"{where}.target_modules {targets!r}: use all-linear, a list of module names "
                              f"([q_proj, v_proj], [linear_qkv]) or one regex string")
    config["target_modules"] = targets if isinstance(targets, str) else list(targets)
    saved = config["modules_to_save"] or []
    if isinstance(saved, str):
        saved = [saved]
    config["modules_to_save"] = list(saved)
    return config


def _matches(spec, name):
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in spec)


def _module(model, dotted):
    module = model
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def family_rows(metadata):
    """{mm weight name: (HF weight names, transform)} of the model in ``metadata`` (model_type + dims)."""
    from mmx.checkpoint.families import family
    from mmx.convert.hf import expand_table

    names, _ = family(metadata["model_type"])
    return expand_table(names, metadata["model"])


def linear_pieces(model, metadata):
    """[(mm module name, [HF module names], transform)] of every Linear of ``model`` with a name-table row."""
    from mmx.nn.layers import Linear

    rows = family_rows(metadata)
    found = []
    for name, _ in nn.named_parameters(model):
        if not name.endswith(".weight") or name not in rows:
            continue
        module_name = name[:-len(".weight")]
        if isinstance(_module(model, module_name), Linear) and not module_name.endswith(NOT_HF_LINEAR):
            hf, transform = rows[name]
            found.append((module_name, [h[:-len(".weight")] for h in hf], transform))
    return found


def piece_rows(transform, sizes, targeted):
    """(out,) int rows placing the targeted pieces' outputs (concatenated in HF order, then a zero column) on the
    mm Linear's rows: ``transform`` (the table's) applied to row indices; None when that is the identity."""
    index, next_row = [], 0
    for size, on in zip(sizes, targeted):
        index.append(np.arange(next_row, next_row + size) if on else None)
        next_row += size if on else 0
    zero = next_row
    blocks = [[(rows if rows is not None else np.full(size, zero)).reshape(size, 1)]
              for rows, size in zip(index, sizes)]
    rows = np.concatenate(transform.to_mm(blocks), axis=0)[:, 0].astype(np.int64)
    return None if (all(targeted) and len(sizes) == 1 and np.array_equal(rows, np.arange(len(rows)))) else rows


def resolve_targets(model, metadata, config):
    """[(mm module, [(HF module, piece key, rows of the piece)], transform, [targeted flags])] of the Linears that
    get adapters; a LoRAConfigError when a target names nothing."""
    spec = config["target_modules"]
    all_linear = isinstance(spec, str) and spec.lower() == ALL_LINEAR
    frozen = {name for name, param in nn.named_parameters(model) if not param.requires_grad}
    chosen, matched_any = [], set()
    for module_name, hf_modules, transform in linear_pieces(model, metadata):
        if all_linear:
            flags = [module_name != OUTPUT_LAYER] * len(hf_modules)
        else:
            whole = _matches(spec, module_name)
            flags = [whole or _matches(spec, hf) for hf in hf_modules]
        if module_name + ".weight" in frozen:   # a freeze flag holds this module: no adapters there
            flags = [False] * len(hf_modules)
        if any(flags):
            matched_any.add(module_name)
            chosen.append((module_name, hf_modules, transform, flags))
    if not chosen:
        raise LoRAConfigError(f"training.lora.target_modules {spec!r} matches no Linear of this model (or only "
                              f"frozen ones); use HF names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                              f"down_proj), mm names (linear_qkv, linear_proj, linear_fc1, linear_fc2) or all-linear")
    return chosen


def _row_counts(model, module_name, hf_modules, transform):
    """Output rows of each HF piece of the mm Linear ``module_name``."""
    linear = _module(model, module_name)
    shapes = transform.hf_shapes((linear.out_features, linear.in_features))
    return [shape[0] for shape in shapes][:len(hf_modules)]


def apply_lora(model, config, metadata, seed=0, dropout=False):
    """Put adapters on ``model`` per ``config`` (lora_config output), freeze everything else but
    ``modules_to_save``; returns the plan {"targets": {mm module: [HF modules with adapters]}, "modules_to_save":
    [mm parameter names], "rank", "alpha"} recorded in checkpoints. ``lora_A`` is drawn from
    ``RandomState(seed)`` in module order (same numbers on both backends), ``lora_B`` is 0. ``dropout``: turn the
    config's LoRA dropout on (training; the backend's generator draws the masks)."""
    from mmx.nn.lora import add_lora, set_dropout

    rng = np.random.RandomState(seed)
    chosen = resolve_targets(model, metadata, config)
    saved = modules_to_save_params(model, metadata, config["modules_to_save"])
    for _, param in nn.named_parameters(model):
        nn.set_requires_grad(param, False)
    targets = {}
    for module_name, hf_modules, transform, flags in chosen:
        sizes = _row_counts(model, module_name, hf_modules, transform)
        pieces = [(hf.rsplit(".", 1)[-1], size) for hf, size, on in zip(hf_modules, sizes, flags) if on]
        linear = _module(model, module_name)
        add_lora(linear, pieces, config["rank"], config["alpha"], piece_rows(transform, sizes, flags), rng,
                 config["dropout"])
        set_dropout(linear, dropout)
        targets[module_name] = [hf for hf, on in zip(hf_modules, flags) if on]
    named = dict(nn.named_parameters(model))
    for name in saved:
        nn.set_requires_grad(named[name], True)
    return {"targets": targets, "modules_to_save": saved, "rank": config["rank"], "alpha": config["alpha"],
            "dropout": config["dropout"]}


def modules_to_save_params(model, metadata, modules):
    """mm parameter names of the modules ``modules`` names (HF or mm module names); an error for a name matching
    nothing, or an HF module that is only part of a fused mm tensor (it could not train alone)."""
    rows = family_rows(metadata)
    params = [name for name, _ in nn.named_parameters(model)]
    chosen = []
    for entry in modules:
        hits = [name for name in params if _matches([entry], name.rsplit(".", 1)[0])]
        for name in params:
            hf = rows.get(name, ((), None))[0]
            hf_modules = [h.rsplit(".", 1)[0] for h in hf]
            if any(_matches([entry], h) for h in hf_modules):
                if not all(_matches([entry], h) for h in hf_modules):
                    raise LoRAConfigError(f"training.lora.modules_to_save {entry!r}: {name} fuses "
                                          f"{', '.join(hf_modules)}, which train together in mmx; name all of them "
                                          f"or the mm module {name.rsplit('.', 1)[0]!r}")
                hits.append(name)
        if not hits:
            raise LoRAConfigError(f"training.lora.modules_to_save {entry!r} matches no module of this model; use "
                                  f"HF names (lm_head, embed_tokens) or mm names (output_layer, word_embeddings)")
        chosen += [name for name in hits if name not in chosen]
    return [name for name in params if name in chosen]


def adapter_names(model):
    """mm names of the adapter parameters of ``model`` (``...lora.<piece>.lora_A`` / ``lora_B``)."""
    return [name for name, _ in nn.named_parameters(model) if ".lora." in name]


def lora_modules(model):
    """{mm module name: its Linear} of the Linears that carry adapters."""
    found = {}
    for name in adapter_names(model):
        module_name = name.split(".lora.")[0]
        found.setdefault(module_name, _module(model, module_name))
    return found


# -- names outside mmx -------------------------------------------------------------------------------------------

def peft_state(adapters, plan, metadata):
    """{PEFT key: array} of mm ``adapters`` ({mm name: array}: adapter tensors + modules_to_save): adapters become
    ``base_model.model.<hf module>.lora_A.weight`` / ``lora_B.weight``; a modules_to_save tensor is split back into
    its HF tensors by the table's transform (``base_model.model.<hf name>``, PEFT's saved form)."""
    from mmx.checkpoint.rows import as_array

    rows = family_rows(metadata)
    out = {}
    for module_name, hf_modules in plan["targets"].items():
        for hf in hf_modules:
            key = hf.rsplit(".", 1)[-1]
            for kind in ("lora_A", "lora_B"):
                out[f"{PEFT_PREFIX}{hf}.{kind}.weight"] = adapters[f"{module_name}.lora.{key}.{kind}"]
    for name in plan["modules_to_save"]:
        hf_names, transform = rows[name]
        for hf, blocks in zip(hf_names, transform.to_hf([adapters[name]])):
            out[PEFT_PREFIX + hf] = np.ascontiguousarray(as_array(blocks))
    return out


def peft_config(plan, metadata, base_path):
    """adapter_config.json of ``plan``: PEFT's LoRA config with the HF module names the adapters sit on."""
    rows = family_rows(metadata)
    saved = sorted({hf.rsplit(".", 1)[0] for name in plan["modules_to_save"] for hf in rows[name][0]})
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_path, "r": plan["rank"],
            "lora_alpha": plan["alpha"], "lora_dropout": plan.get("dropout", 0.0), "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "target_modules": sorted(hf for hfs in plan["targets"].values() for hf in hfs),
            "modules_to_save": saved or None}


def from_peft(adapter_dir, metadata):
    """(lora config, mm target spec, {HF weight name: array} of modules_to_save, {(HF module, kind): array}) of a
    PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.numpy import load_file

    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
        raise LoRAConfigError(f"{adapter_dir}: not a PEFT adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor an mmx "
                              f"LoRA checkpoint (latest_checkpointed_iteration.txt)")
    with open(config_path) as handle:
        peft = json.load(handle)
    if peft.get("peft_type") != "LORA":
        raise LoRAConfigError(f"{config_path}: peft_type {peft.get('peft_type')!r}; mmx reads LoRA adapters only")
    for key, fine in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none")):
        if peft.get(key, fine) != fine:
            raise LoRAConfigError(f"{config_path}: {key} {peft[key]!r} is not supported by mmx (only plain LoRA: "
                                  f"{key} {fine!r})")
    if peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise LoRAConfigError(f"{config_path}: rank_pattern / alpha_pattern are not supported by mmx; one rank and "
                              f"alpha for every adapter")
    tensors = load_file(weights_path)
    adapters, saved = {}, {}
    for key, value in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        found = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", name)
        if found:
            adapters[(found.group(1), found.group(2))] = value
        else:
            saved[name.replace(".modules_to_save.default.", ".")] = value
    modules = sorted({module for module, _ in adapters})
    config = lora_config({"rank": int(peft["r"]), "alpha": peft["lora_alpha"], "target_modules": modules,
                          "dropout": float(peft.get("lora_dropout") or 0.0),
                          "modules_to_save": sorted({name.rsplit(".", 1)[0] for name in saved})}, config_path)
    return config, saved, adapters


def import_peft(model, plan, metadata, saved, adapters):
    """{mm name: array} for ``model`` (already given ``plan``'s adapters) from PEFT tensors (:func:`from_peft`)."""
    rows = family_rows(metadata)
    out = {}
    for module_name, hf_modules in plan["targets"].items():
        for hf in hf_modules:
            key = hf.rsplit(".", 1)[-1]
            for kind in ("lora_A", "lora_B"):
                out[f"{module_name}.lora.{key}.{kind}"] = np.asarray(adapters[(hf, kind)], np.float32)
    for name in plan["modules_to_save"]:
        hf_names, transform = rows[name]
        out[name] = np.concatenate(transform.to_mm([[np.asarray(saved[hf], np.float32)] for hf in hf_names]), 0)
    return out


# -- the base model's identity -----------------------------------------------------------------------------------

def base_identity(path):
    """{"path", "sha256"} of the base checkpoint at ``path``: a hash over its weight files (relative names and
    bytes, in name order), so an adapter is only ever applied to the weights it was trained on."""
    digest = hashlib.sha256()
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            if name.endswith(".safetensors") and not name.startswith("."):
                files.append(os.path.relpath(os.path.join(root, name), path))
    for relative in sorted(files):
        digest.update(relative.encode() + b"\0")
        with open(os.path.join(path, relative), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest()}


# -- training ----------------------------------------------------------------------------------------------------

def read_mmx_adapter(load_dir):
    """(recorded lora metadata, {mm name: array}) of an mmx LoRA checkpoint (a finetune save with training.lora)."""
    from mmx.train import checkpoint as ckpt

    loaded = ckpt.load_checkpoint(load_dir)
    recorded = loaded["metadata"].get("lora")
    if not recorded:
        raise LoRAConfigError(f"{load_dir}: a full checkpoint, not a LoRA one (its metadata has no lora section); "
                              f"use it as model.init_from_hf_path instead")
    return recorded, loaded["model"]


def is_peft_dir(path):
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def setup_training(model, training, metadata):
    """Apply ``training.lora`` to ``model`` for the Trainer: (recorded metadata {"plan", "config", "base"}, names of
    the tensors a checkpoint holds (adapters + modules_to_save)). With ``init_from`` (a PEFT adapter or an mmx LoRA
    checkpoint) its rank, alpha, targets and modules_to_save are used and its tensors loaded."""
    config = lora_config(training["lora"])
    start = None
    if config["init_from"]:
        source = config["init_from"]
        if not os.path.isdir(source):
            raise LoRAConfigError(f"training.lora.init_from {source!r} is not a directory; point it at a PEFT adapter "
                                  f"(adapter_config.json) or an mmx LoRA checkpoint")
        if is_peft_dir(source):
            peft, saved, adapters = from_peft(source, metadata)
            config.update({key: peft[key] for key in ("rank", "alpha", "target_modules", "modules_to_save")})
            start = ("peft", saved, adapters)
        else:
            recorded, tensors = read_mmx_adapter(source)
            config.update({key: recorded["config"][key] for key in ("rank", "alpha", "target_modules",
                                                                    "modules_to_save")})
            start = ("mmx", tensors)
    plan = apply_lora(model, config, metadata, training["seed"], dropout=True)
    base = metadata.get("init_from_hf_path")
    recorded = {"plan": plan, "config": config, "base": base_identity(base) if base else None}
    if start is not None and start[0] == "peft":
        load_adapters(model, import_peft(model, plan, metadata, start[1], start[2]), plan, config["init_from"])
    elif start is not None:
        load_adapters(model, start[1], plan, config["init_from"])
    return recorded, checkpoint_names(model, plan)


def checkpoint_names(model, plan):
    """Names of the tensors a LoRA checkpoint holds: the adapters, then modules_to_save."""
    return adapter_names(model) + list(plan["modules_to_save"])


def load_adapters(model, tensors, plan, where):
    """Copy adapter (+ modules_to_save) ``tensors`` {mm name: array} into ``model``; an error naming what is
    missing or extra (an adapter of other targets)."""
    from mmx import ops

    expected = set(checkpoint_names(model, plan))
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise LoRAConfigError(f"{where}: the adapter does not fit this LoRA setup: {len(missing)} tensors missing "
                              f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}; use the same target_modules and "
                              f"modules_to_save (or the same base model family)")
    nn.load_state_dict(model, {name: ops.tensor(np.asarray(tensors[name], np.float32)) for name in expected},
                       strict=False)


def check_base(recorded, saved, where, base_key="model.init_from_hf_path"):
    """Error unless the checkpoint's adapters (``saved``: its metadata's lora section) were trained on the base model
    this run loads (``recorded``, given by ``base_key``): same content hash of the weight files (an HF directory and
    its hf_to_mm conversion are different files: use the one the run trained on)."""
    mine, theirs = (recorded or {}).get("base"), (saved or {}).get("base")
    if mine and theirs and mine["sha256"] != theirs["sha256"]:
        raise LoRAConfigError(f"{where}: its adapters were trained on the base model {theirs['path']} (sha256 "
                              f"{theirs['sha256'][:12]}), but {base_key} {mine['path']} holds other weight files "
                              f"(sha256 {mine['sha256'][:12]}); point {base_key} at that base")


def size_summary(model, trainable):
    """One line: trainable parameters of all, and the AdamW state they need (two float32 moments each)."""
    total = sum(int(np.prod(value.shape)) for value in nn.state_dict(model).values())
    count = sum(int(np.prod(param.shape)) for param in trainable)
    return {"trainable_parameters": count, "total_parameters": total, "optimizer_state_bytes": 8 * count}


# -- exports -----------------------------------------------------------------------------------------------------

def read_lora_checkpoint(mm_dir):
    """(metadata, {mm name: float32 array}) of the latest iteration of an mmx LoRA checkpoint (a finetune save)."""
    from mmx.train import checkpoint as ckpt

    if not os.path.isdir(mm_dir) or ckpt.read_latest(mm_dir) is None:
        raise LoRAConfigError(f"--mm-dir {mm_dir}: no mmx checkpoint there ({ckpt.LATEST} missing); point it at the "
                              f"save directory of a finetune run with training.lora")
    loaded = ckpt.load_checkpoint(mm_dir)
    if not loaded["metadata"].get("lora"):
        raise LoRAConfigError(f"--mm-dir {mm_dir}: a full checkpoint, not a LoRA one (its metadata has no lora "
                              f"section); use `mmx convert mm_to_hf` without --merge-lora")
    return loaded["metadata"], {name: np.asarray(value, np.float32) for name, value in loaded["model"].items()}


def lora_to_peft(mm_dir, out_dir, base_path=None, overwrite=False):
    """Write the LoRA checkpoint ``mm_dir`` as a PEFT adapter (adapter_config.json + adapter_model.safetensors) that
    ``peft.PeftModel.from_pretrained`` loads on the transformers model of the base; returns ``out_dir``."""
    from safetensors.numpy import save_file

    from mmx.checkpoint.publish import publish_dir

    metadata, tensors = read_lora_checkpoint(mm_dir)
    recorded = metadata["lora"]
    base = base_path or (recorded.get("base") or {}).get("path")
    state = peft_state(tensors, recorded["plan"], metadata)
    config = peft_config(recorded["plan"], metadata, base)

    def build(staging):
        save_file({key: np.ascontiguousarray(value) for key, value in state.items()},
                  os.path.join(staging, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(staging, ADAPTER_CONFIG), "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)

    publish_dir(out_dir, build, overwrite)
    return out_dir


def merged_tensors(metadata, base, adapters):
    """{mm name: array} of ``base`` (the base model's mm tensors) with the adapters merged into their Linears and
    modules_to_save replaced: the full weights ``mm_to_hf --merge-lora`` writes."""
    from mmx.nn.lora import merged_weight

    recorded = metadata["lora"]
    plan, rows_by_name = recorded["plan"], family_rows(metadata)
    scaling = float(plan["alpha"]) / float(plan["rank"])
    merged = dict(base)
    for module_name, hf_modules in plan["targets"].items():
        hf_all, transform = rows_by_name[module_name + ".weight"]
        hf_all = [h[:-len(".weight")] for h in hf_all]
        weight = base[module_name + ".weight"]
        sizes = [shape[0] for shape in transform.hf_shapes(weight.shape)][:len(hf_all)]
        flags = [hf in hf_modules for hf in hf_all]
        pieces = [(adapters[f"{module_name}.lora.{hf.rsplit('.', 1)[-1]}.lora_A"],
                   adapters[f"{module_name}.lora.{hf.rsplit('.', 1)[-1]}.lora_B"]) for hf in hf_modules]
        merged[module_name + ".weight"] = merged_weight(weight, pieces, scaling, piece_rows(transform, sizes, flags))
    for name in plan["modules_to_save"]:
        merged[name] = adapters[name].astype(base[name].dtype)
    return merged


class _MemorySource:
    """An mm source (``entries`` + ``read``, as mmx.checkpoint's MMSource) over tensors in memory."""

    def __init__(self, tensors):
        from mmx.checkpoint.safetensors_io import dtype_name

        self.tensors = tensors
        self.entries = {name: (dtype_name(value.dtype), tuple(value.shape)) for name, value in tensors.items()}

    def read(self, name):
        return [self.tensors[name]]


def read_base(base_dir):
    """(metadata, {mm name: array in its stored dtype}) of a base model: an mm checkpoint or an HF directory."""
    from mmx.checkpoint import load_mm
    from mmx.convert.drivers import read_hf_as_mm
    from mmx.train import checkpoint as ckpt

    if os.path.exists(os.path.join(base_dir, ckpt.LATEST)):
        metadata, tensors = load_mm(base_dir)
    else:
        metadata, tensors = read_hf_as_mm(base_dir)
    return metadata, {name: np.asarray(value) for name, value in tensors.items()}


def merge_lora_to_hf(mm_dir, save_hf_dir, base_dir=None, max_shard_bytes=5 * 1024 ** 3, overwrite=False):
    """``mmx convert mm_to_hf --merge-lora``: the LoRA checkpoint ``mm_dir`` merged into its base (``base_dir``,
    default the base the run recorded; its sha256 must match) and written as a full HF checkpoint in the base's
    dtype, with the base's support files (config, tokenizer, processor). Returns the weight files written."""
    from mmx.checkpoint.families import family
    from mmx.checkpoint.publish import publish_dir
    from mmx.convert.hf import copy_support_files, write_hf

    metadata, adapters = read_lora_checkpoint(mm_dir)
    recorded = metadata["lora"]
    base_dir = base_dir or (recorded.get("base") or {}).get("path")
    if not base_dir or not os.path.isdir(base_dir):
        raise LoRAConfigError(f"--mm-dir {mm_dir}: its base model {base_dir!r} is not a directory; pass it with "
                              f"--hf-dir (the HF or mm checkpoint the adapters were trained on)")
    check_base({"base": base_identity(base_dir)}, recorded, f"--mm-dir {mm_dir}", "--hf-dir")
    base_metadata, base = read_base(base_dir)
    merged = merged_tensors(metadata, base, adapters)
    names, _ = family(base_metadata["model_type"])
    support = base_dir if os.path.isfile(os.path.join(base_dir, "config.json")) else mm_dir

    def build(staging):
        files = write_hf(_MemorySource(merged), names, base_metadata["model"], base_metadata["hf_names"], staging,
                         max_shard_bytes)
        copy_support_files(support, staging, atomic=False)
        return files

    return publish_dir(save_hf_dir, build, overwrite)


# -- inference ---------------------------------------------------------------------------------------------------

def model_metadata(model_dir):
    """{"model_type", "model": dims} of the HF or mm checkpoint in ``model_dir`` (its config.json)."""
    from mmx.checkpoint.families import family
    from mmx.convert.hf import read_config

    config = read_config(model_dir)
    names, _ = family(config.get("model_type"), os.path.join(model_dir, "config.json"))
    return {"model_type": config["model_type"], "model": names.dimensions(config)}


def attach_adapter(model, model_dir, adapter_dir):
    """Give ``model`` (the base in ``model_dir``, weights loaded) the adapters in ``adapter_dir``: a PEFT adapter
    (adapter_config.json + adapter_model.safetensors) or an mmx LoRA save (checked against the base by sha256).
    Returns the plan (targets, modules_to_save)."""
    if not os.path.isdir(adapter_dir):
        raise LoRAConfigError(f"--adapter {adapter_dir}: no such directory")
    metadata = model_metadata(model_dir)
    if is_peft_dir(adapter_dir):
        config, saved, adapters = from_peft(adapter_dir, metadata)
        plan = apply_lora(model, config, metadata)
        load_adapters(model, import_peft(model, plan, metadata, saved, adapters), plan, f"--adapter {adapter_dir}")
        return plan
    recorded, tensors = read_mmx_adapter(adapter_dir)
    check_base({"base": base_identity(model_dir)}, recorded, f"--adapter {adapter_dir}", "--model")
    plan = apply_lora(model, recorded["config"], metadata)
    load_adapters(model, tensors, plan, f"--adapter {adapter_dir}")
    return plan


class dropout_disabled:  # noqa: N801 - used as a context manager, like torch.no_grad
    """``with dropout_disabled(model):`` the LoRA dropout of ``model``'s adapters is off inside (evaluation during
    training), and back to what it was after."""

    def __init__(self, model):
        self.model, self.saved = model, []

    def __enter__(self):
        from mmx.nn.lora import set_dropout

        for linear in lora_modules(self.model).values():
            self.saved.append((linear, any(linear.lora[key].dropout_active for key in linear.lora_pieces)))
            set_dropout(linear, False)
        return self.model

    def __exit__(self, *exc):
        from mmx.nn.lora import set_dropout

        for linear, active in self.saved:
            set_dropout(linear, active)
        return False
