"""The ``mmx finetune`` config: one YAML/JSON file with ``model``, ``data`` and ``training`` sections, plus dotted
``section.key=value`` overrides from the command line. This module is the one place that reads training keys.

``model`` (the guides' model.json keys)::

    init_from_hf_path: DIR        # an HF checkpoint, converted in memory (or an mm dir from `mmx convert hf_to_mm`)
    image_encoder: {vision_encoder: {freeze: false}, vision_projector: {freeze: false}}
    text_decoder: {freeze: false, lm_head: {freeze: false}}

Model structure (layers, heads, sizes) always comes from the checkpoint's config.json; a structure key here is an
error rather than silently overriding it.

``data``: passed to the data pipeline (mmx.data); its keys are checked there.

``training`` (Megatron's argument names, with ``_`` for ``-``): see ``TRAINING_DEFAULTS``.
"""
import copy
import difflib
import json
import os

import yaml

from mmx.checkpoint.publish import recover
from mmx.train.host_memory import MODES as HOST_MEMORY_MODES

TRAINING_DEFAULTS = {
    "seed": 1234,
    "train_iters": 100,
    "micro_batch_size": 1,
    "global_batch_size": 8,         # = micro_batch_size × gradient-accumulation steps × data-parallel size
    "lr": 1e-5,
    "min_lr": 0.0,
    "lr_warmup_iters": 0,
    "lr_warmup_fraction": None,     # overrides lr_warmup_iters when set (fraction of train_iters)
    "lr_decay_style": "cosine",     # cosine | linear | constant
    "lr_decay_iters": None,         # default train_iters
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "clip_grad": 1.0,               # global-norm clip; 0 disables
    "precision": "fp32",            # fp32 | bf16 (torch: autocast with fp32 master weights)
    "loss_type": "default",         # default | per_token | per_sample (vlm_model_loss_calculate_type)
    # MoE: weight of the load-balancing loss added to the training loss (each micro-batch's, averaged over the
    # global batch's micro-batches); null: the checkpoint's text_config.router_aux_loss_coef when its
    # output_router_logits is true (what transformers trains with), else 0 (off)
    "router_aux_loss_coef": None,
    # LoRA (mmx.lora): {rank, alpha, dropout, target_modules, modules_to_save, init_from}; null trains every weight
    # the freeze flags leave; set, only the adapters (+ modules_to_save) train and checkpoints hold only them
    "lora": None,
    "save": None,                   # checkpoint directory
    "load": None,                   # resume from this checkpoint directory (latest_checkpointed_iteration.txt)
    "save_interval": 0,             # 0: only at the end
    "save_total_limit": None,       # keep only the newest K iter_* checkpoints in save (null: every one)
    "num_train_epochs": None,       # set: train_iters = ceil(epochs x training samples / global_batch_size)
    "eval_interval": 0,             # evaluate data.val_size's eval split every N iterations (0: at the end only)
    "overwrite": False,             # replace a checkpoint already in `save` that this run does not resume
    "allow_changed": [],            # RESUME_SETTINGS keys a resumed run may change (e.g. [lr, data.cutoff_len])
    "log_interval": 1,
    "log_tps": False,               # print mean sequence length per step and tokens/s at the end
    "no_load_optim": False,
    "no_load_rng": False,
    "no_save_optim": False,
    "no_save_rng": False,
    "log_dir": None,                # metrics.jsonl, loss_curve.png, TensorBoard events (default: SAVE/logs)
    "peak_tflops": None,            # for MFU; default: a known accelerator's data sheet, else a 2048² matmul
    "host_memory": "auto",          # keep: freed host memory reused by the next step; release: glibc's defaults;
                                    # auto: keep, release under fully_shard (mmx.train.host_memory)
    "compile": False,               # true: compile each decoder layer / vision block (torch.compile, regional)
    "progress_bar": True,
    # How the processes of a torchrun / msrun launch hold the model: replicate (each holds the whole model, gradients
    # and AdamW state: ~16 bytes per trainable parameter per device) or fully_shard (torch, FSDP2: each holds 1/N of
    # them, a decoder layer / vision block is gathered whole only while it computes; MindSpore, ZeRO-1: each holds
    # 1/N of the AdamW state, the weights and gradients whole).
    "data_parallel": "replicate",
    # Megatron's model-parallel sizes, accepted as 1 only: mmx trains data parallel (training.data_parallel);
    # tensor / pipeline / context parallel training are not implemented.
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "context_parallel_size": 1,
    # Expert parallel (mmx.expert_parallel): each MoE layer's experts split over groups of this many processes
    # (it divides the process count and the number of experts); the rest of the model is data parallel.
    "expert_model_parallel_size": 1,
}

DATA_PARALLEL_MODES = ("replicate", "fully_shard")

MODEL_PARALLEL_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                       "expert_model_parallel_size")

MODEL_DEFAULTS = {
    "init_from_hf_path": None,
    "image_encoder": {"vision_encoder": {"freeze": False}, "vision_projector": {"freeze": False}},
    "text_decoder": {"freeze": False, "lm_head": {"freeze": False}},
}

STRUCTURE_KEYS = ("hidden_size", "num_layers", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size", "depth", "num_heads", "pipeline_num_layers")


# The settings a resumed run must share with the run that wrote its checkpoint, recorded in every checkpoint
# (trainer_state "run_settings"): the sample order (seed, batch sizes, the data keys that decide which samples exist,
# their tokens and their order), the loss weights, the update rule and the learning-rate schedule depend on them.
# train_iters is not one: resuming with a larger one is how a run is extended. micro_batch_size only matters to the
# "default" loss (a mean per micro-batch).
RESUME_SETTINGS = ("seed", "global_batch_size", "micro_batch_size", "loss_type", "lr", "min_lr", "lr_warmup_iters",
                   "lr_warmup_fraction", "lr_decay_style", "lr_decay_iters", "weight_decay", "adam_beta1",
                   "adam_beta2", "adam_eps", "clip_grad", "router_aux_loss_coef", "lora")
DATA_RESUME_SETTINGS = ("dataset", "max_samples", "cutoff_len", "packing", "skip_bad_samples", "train_on_prompt",
                        "mask_history", "image_max_pixels", "image_min_pixels", "seed", "shuffle", "buffer_size",
                        "val_size", "mix_ratios")
LEGACY_RUN_SETTINGS = ("seed", "global_batch_size", "loss_type")   # trainer_state keys before run_settings existed
WHY_SETTING = {"seed": "it reshuffles the sample order exact resume rests on",
               "global_batch_size": "the batches and the consumed-sample position change",
               "loss_type": "the loss weights change"}


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file, the key and the fix."""


def read_config_file(path):
    """The dict in a YAML (.yaml/.yml) or JSON file."""
    from mmx.data.config import read_text

    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = read_text(path, "config file")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with model / data / training sections")
    return data


def apply_overrides(config, overrides, source="command line"):
    """``config`` with each ``section.key.sub=value`` set (value parsed as YAML: numbers, true/false, lists)."""
    config = copy.deepcopy(config)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} on the {source} must look like training.lr=1e-4")
        dotted, raw = override.split("=", 1)
        keys = dotted.strip().split(".")
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {key!r} is a value, not a section")
        node[keys[-1]] = parse_value(raw)
    return config


def parse_value(raw):
    """A command-line value: YAML scalars/lists, plus ``2e-4``-style floats that YAML 1.1 reads as strings."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _merge(defaults, given, where, path=None):
    if not isinstance(given, dict):
        raise ConfigError(f"{path or 'config'}: {where} must be a mapping of keys, got {given!r}")
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), defaults, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(defaults))}"
            raise ConfigError(f"{path + ': ' if path else ''}unknown key {where}.{key}{hint}")
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            merged[key] = _merge(defaults[key], value, f"{where}.{key}", path)
        else:
            merged[key] = value
    return merged


def load_config(path=None, overrides=(), base=None):
    """The full config: file (or ``base`` dict) + overrides, merged over the defaults and checked.

    Returns {"model": ..., "data": ..., "training": ...}; ``training`` has every key of ``TRAINING_DEFAULTS``.
    """
    raw = read_config_file(path) if path else copy.deepcopy(base or {})
    raw = apply_overrides(raw, overrides)
    where = path or "config"
    unknown = set(raw) - {"model", "data", "training"}
    if unknown:
        close = difflib.get_close_matches(str(sorted(unknown, key=str)[0]), ["model", "data", "training"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown section {sorted(unknown, key=str)[0]!r}{hint}; the sections are model / "
                          f"data / training")
    raw["data"] = read_data_section(raw.get("data"), where)
    model = raw.get("model") or {}
    structure = [key for key in model if key in STRUCTURE_KEYS]
    if structure:
        raise ConfigError(f"{where}: model.{structure[0]} sets model structure, which comes from the checkpoint's "
                          f"config.json; remove it here (edit the checkpoint's config to change the model)")
    config = {"model": _merge(MODEL_DEFAULTS, model, "model", where), "data": raw.get("data") or {},
              "training": _merge(TRAINING_DEFAULTS, raw.get("training") or {}, "training", where)}
    check_types(config["training"], where)
    check_training(config["training"], where)
    return config


def read_data_section(data, where):
    """The ``data`` section: a mapping of data keys (unknown ones refused, did-you-mean), or the path of a data
    config (the guides' data.json or a flat YAML/JSON; relative to the working directory, as in the guides)."""
    from mmx.data.config import check_data_keys, read_data_file

    if data is None or data == {}:
        return {}
    if isinstance(data, str):
        try:
            data = read_data_file(data)
        except (ValueError, OSError) as err:
            raise ConfigError(f"{where}: data {data!r}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: data must be a mapping of data keys (dataset: FILE, ...) or the path of a "
                          f"data.json, got {type(data).__name__}")
    try:
        check_data_keys(data, f"{where}: data")
    except ValueError as err:
        raise ConfigError(str(err).replace(": data: unknown key '", ": unknown key 'data.")) from err
    return data


# The type of each training key whose default is None (the others take their default's type).
NULL_DEFAULT_TYPES = {"lr_warmup_fraction": float, "lr_decay_iters": int, "router_aux_loss_coef": float,
                      "save": str, "load": str, "log_dir": str, "peak_tflops": float, "num_train_epochs": float,
                      "save_total_limit": int}
EXAMPLES = {int: "an integer, e.g. 100", float: "a number, e.g. 1e-4", bool: "true or false", str: "a path or name",
            list: "a list, e.g. [lr, seed]"}


def check_types(training, where="config"):
    """ConfigError naming a training key whose value has the wrong type (``training.lr=abc``); integral floats
    (``train_iters=1e3``) become ints."""
    for key, value in training.items():
        default = TRAINING_DEFAULTS.get(key)
        kind = NULL_DEFAULT_TYPES.get(key) if default is None else type(default)
        if value is None or kind not in EXAMPLES:
            continue
        if kind in (int, float) and isinstance(value, str):   # YAML 1.1 reads `lr: 1e-5` as a string
            try:
                training[key] = value = float(value)
            except ValueError:
                pass
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        if kind is int and isinstance(value, float) and value.is_integer():
            training[key] = value = int(value)
        if kind is list and isinstance(value, str):
            continue
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            continue
        raise ConfigError(f"{where}: training.{key} is {value!r}: it must be {EXAMPLES[kind]} "
                          f"(training.{key}={'1e-4' if kind is float else '100' if kind is int else 'true'} on the "
                          f"command line)" if kind in (int, float, bool) else
                          f"{where}: training.{key} is {value!r}: it must be {EXAMPLES[kind]}")


def check_training(training, where="config"):
    """Errors for values that cannot work, naming the key and the fix."""
    micro, global_batch = training["micro_batch_size"], training["global_batch_size"]
    if micro < 1 or global_batch < 1 or global_batch % micro:
        raise ConfigError(f"{where}: training.global_batch_size ({global_batch}) must be a positive multiple of "
                          f"training.micro_batch_size ({micro}); gradient accumulation = global / micro")
    if training["min_lr"] > training["lr"]:
        raise ConfigError(f"{where}: training.min_lr ({training['min_lr']}) is larger than training.lr "
                          f"({training['lr']}); the schedule decays from lr to min_lr: lower min_lr")
    for key in ("eval_interval", "save_total_limit", "num_train_epochs"):
        if training[key] is not None and training[key] < 0 or (key != "eval_interval" and training[key] == 0):
            raise ConfigError(f"{where}: training.{key} {training[key]!r} must be positive (or null / remove it)")
    if training["host_memory"] not in HOST_MEMORY_MODES:
        raise ConfigError(f"{where}: training.host_memory {training['host_memory']!r}: use auto, keep (freed host "
                          f"memory is reused by the next step) or release (glibc's defaults: freed memory goes back)")
    if training["precision"] not in ("fp32", "bf16"):
        raise ConfigError(f"{where}: training.precision {training['precision']!r}: use fp32 or bf16")
    if training["train_iters"] < 1:
        raise ConfigError(f"{where}: training.train_iters must be at least 1")
    if training["load"] and not os.path.isdir(training["load"]) and not recover(training["load"]):
        raise ConfigError(f"{where}: training.load {training['load']} is not a directory")
    if training["data_parallel"] not in DATA_PARALLEL_MODES:
        raise ConfigError(f"{where}: training.data_parallel {training['data_parallel']!r}: use replicate (every "
                          f"process holds the whole model and optimizer) or fully_shard (torch: weights, gradients "
                          f"and AdamW state sharded over the processes; MindSpore: the AdamW state)")
    if training["lora"] is not None:
        from mmx.lora import LoRAConfigError, lora_config

        try:
            training["lora"] = lora_config(training["lora"])
        except LoRAConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        if training["data_parallel"] == "fully_shard":
            raise ConfigError(f"{where}: training.lora with training.data_parallel: fully_shard is not supported (not "
                              f"tested); use replicate: the adapters' gradients and AdamW state are small")
    allowed = training["allow_changed"]
    if isinstance(allowed, str):
        allowed = training["allow_changed"] = [part.strip() for part in allowed.split(",") if part.strip()]
    unknown = [name for name in allowed if name not in known_settings()]
    if unknown:
        raise ConfigError(f"{where}: training.allow_changed names {unknown}, which no checkpoint records; use any "
                          f"of {', '.join(known_settings())}")
    expert = training["expert_model_parallel_size"]
    if not isinstance(expert, int) or isinstance(expert, bool) or expert < 1:
        raise ConfigError(f"{where}: training.expert_model_parallel_size {expert!r} must be a positive integer (1: "
                          f"every process holds all experts)")
    for key in MODEL_PARALLEL_KEYS:
        if key == "expert_model_parallel_size":
            continue   # checked above; mmx.expert_parallel checks it against the launch and the model
        if training[key] != 1:
            raise ConfigError(f"{where}: training.{key}={training[key]}: mmx finetune trains data parallel only (the "
                              f"NPUS_PER_NODE x NNODES processes hold the whole model, or shards of it with "
                              f"training.data_parallel: fully_shard); tensor / pipeline / "
                              f"context parallel training is not implemented. Set {key}: 1 (or remove it).")


def known_settings():
    """The names ``training.allow_changed`` accepts: RESUME_SETTINGS and ``data.`` + DATA_RESUME_SETTINGS."""
    return list(RESUME_SETTINGS) + [f"data.{key}" for key in DATA_RESUME_SETTINGS]


def run_settings(training, data=None):
    """{name: value} of this run's RESUME_SETTINGS (``data``: {key: value} of the data config), JSON-normalised."""
    settings = {key: training[key] for key in RESUME_SETTINGS}
    settings.update({f"data.{key}": value for key, value in (data or {}).items() if key in DATA_RESUME_SETTINGS})
    return json.loads(json.dumps(settings))


def compare_run_settings(saved, current, allowed=()):
    """(refused, accepted): [(name, saved value, current value)] of the settings ``current`` changes from ``saved``
    (a checkpoint's trainer_state "run_settings"), split by ``allowed``. Names ``saved`` lacks (older checkpoints,
    or a run without a data config) are not compared."""
    default_loss = "default" in (saved.get("loss_type"), current.get("loss_type"))
    refused, accepted = [], []
    for name, value in current.items():
        if name not in saved or saved[name] == value or (name == "micro_batch_size" and not default_loss):
            continue
        (accepted if name in allowed else refused).append((name, saved[name], value))
    return refused, accepted


def settings_error(load_dir, iteration, refused):
    """The ConfigError of a resume that changes recorded settings: each one old → new, and the two fixes."""
    changes = "; ".join(f"{name} {old!r} -> {new!r}" + (f" ({WHY_SETTING[name]})" if name in WHY_SETTING else "")
                        for name, old, new in refused)
    names = [name for name, _, _ in refused]
    return ConfigError(f"training.load {load_dir}: this run changes settings the checkpoint at iteration {iteration} "
                       f"was trained with: {changes}. Resume with the saved values, or accept the change with "
                       f"training.allow_changed=[{','.join(names)}] (mmx finetune "
                       f"{' '.join(f'--allow-changed {name}' for name in names)})")


def check_data_parallel(training, world_size):
    """Error unless the global batch splits into micro-batches evenly over ``world_size`` data-parallel ranks."""
    micro, global_batch = training["micro_batch_size"], training["global_batch_size"]
    per_round = micro * world_size  # samples when every rank takes one micro-batch
    if global_batch % per_round:
        sizes = [size for size in ((global_batch // per_round) * per_round, (global_batch // per_round + 1) * per_round)
                 if size]
        raise ConfigError(f"training.global_batch_size ({global_batch}) must be a multiple of "
                          f"training.micro_batch_size ({micro}) x the data-parallel size ({world_size} processes) = "
                          f"{per_round}, so every rank gets the same number of micro-batches: set global_batch_size "
                          f"to {' or '.join(map(str, sizes))}, or launch a number of processes that divides "
                          f"{global_batch // micro}")


def warmup_iters(training):
    """Warmup steps: ``lr_warmup_fraction × train_iters`` when the fraction is set, else ``lr_warmup_iters``."""
    if training["lr_warmup_fraction"] is not None:
        return int(training["lr_warmup_fraction"] * training["train_iters"])
    return int(training["lr_warmup_iters"])
