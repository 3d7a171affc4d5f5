"""``mmx finetune``: model + data from one config, then the Trainer.

Model: ``model.init_from_hf_path`` is an HF checkpoint (converted to mm names in memory, nothing written) or an mm
checkpoint (``mmx convert hf_to_mm`` output or a finetune save, any TP/PP layout, merged by ``load_mm``). Its
config.json decides the structure. Weights train in float32 (fp32 master weights; ``precision: bf16`` only changes
the compute dtype on torch). ``training.load`` resumes a finetune save on top (weights, optimizer, RNG, position).

Data: ``data`` is the data pipeline's section (mmx.data); ``model_name_or_path`` defaults to the model's directory,
whose processor and chat template are then used. ``streaming: true`` feeds the Trainer from mmx.data's
StreamingLoader, whose state goes into every checkpoint (a resumed run continues with exactly the next batch).

The save directory gets the model's support files (config, tokenizer, processor, chat template), so it is a
self-contained mm checkpoint for ``mmx convert mm_to_hf`` and ``mmx infer``. It must not hold another run's
checkpoint (resume it with ``training.load``, or replace it with ``training.overwrite``): that is checked before
anything is written there. The start-up summary counts every sample the data pipeline dropped, with its reason.

Launched by torchrun / msrun with several processes, it trains data parallel (mmx.train.loop): each process builds
the whole model, a streaming source reads the process's own shard, and only rank 0 prints and writes files. With
``training.data_parallel: fully_shard`` the Trainer shards the model over the processes: on torch in the units of
the family's plan (``FULLY_SHARD_UNITS``: vision blocks and decoder layers), on MindSpore only the AdamW state.
"""
import importlib
import math
import os

import numpy as np

from mmx.checkpoint.publish import recover
from mmx.data.dataset import describe_drops, empty_reason, summary_line
from mmx.train.checkpoint import LATEST, prepare_save_dir
from mmx.train.config import DATA_RESUME_SETTINGS, ConfigError, check_data_parallel
from mmx.train.freeze import apply_freeze
from mmx.train.host_memory import set_host_memory
from mmx.train.loop import Trainer, shard_unit_names


def read_weights(path):
    """(metadata as mmx.checkpoint writes it, {mm name: float32 numpy}) of an HF or mm checkpoint directory.

    mm: ``load_mm`` (any layout, merged); HF: converted in memory (``read_hf_as_mm``).
    """
    from mmx.checkpoint import load_mm
    from mmx.convert.drivers import read_hf_as_mm

    if not path or not recover(path) or not os.path.isdir(path):
        raise FileNotFoundError(f"model.init_from_hf_path {path!r} is not a directory; point it at an HF checkpoint "
                                f"(config.json + safetensors) or an mm checkpoint from `mmx convert hf_to_mm`")
    metadata, tensors = load_mm(path) if os.path.exists(os.path.join(path, LATEST)) else read_hf_as_mm(path)
    metadata = {key: metadata[key] for key in ("model_type", "hf_names", "model", "parallel") if key in metadata}
    return metadata, {name: np.asarray(value, np.float32) for name, value in tensors.items()}


def build_model(model_config, training=None, world_size=1, rank=0):
    """(model on the current backend with the init weights and freeze flags applied, metadata, frozen names).

    An mm checkpoint is streamed into a model built without weight storage (``models.build_streamed``: one tensor in
    host memory besides the model, never a second copy); an HF one is converted in memory (:func:`read_weights`).
    Loading is rank-local with several processes (and no ``training.load``, no LoRA): under
    ``training.data_parallel: fully_shard`` the model is sharded before it has weights and each rank reads only its
    own rows of every tensor from the shards (``distributed.load_fully_sharded``); under expert parallel each rank
    reads only its own experts' rows of the stacked-expert tensors (``expert_parallel.load_rank_local``). The Trainer
    (``sharded_model=True``) then neither broadcasts nor shards it again.
    """
    from mmx import backend, expert_parallel, models, nn
    from mmx.checkpoint.store import MMSource
    from mmx.models.common.weights import stream_mm_state

    path = model_config["init_from_hf_path"]
    if not path or not recover(path) or not os.path.isdir(path) or not os.path.exists(os.path.join(path, LATEST)):
        metadata, tensors = read_weights(path)
        model = models.build(path)
        models.load_mm_state(model, tensors)
        frozen = apply_freeze(model, model_config)
    elif rank_local(training, world_size):
        source = MMSource(path, streaming=True)
        with nn.empty_init():
            model = models.build(path)
        frozen = apply_freeze(model, model_config)   # before sharding: the units keep their flags
        metadata, units, experts = source.metadata, shard_unit_names(model, shard_units(path)), ()
        ep_size = expert_parallel.checked_size(training, world_size)
        if ep_size > 1:   # the expert slots cut to this rank's experts, their rows read alone
            spans = expert_parallel.local_slots(model, ep_size, rank % ep_size)
            source, experts = expert_parallel.LocalRows(source, spans), (expert_parallel.expert_units(spans), ep_size)
        if training["data_parallel"] == "fully_shard":
            model = backend.get().distributed.load_fully_sharded(model, units, source, *experts)
        else:
            model = stream_mm_state(model, source)
    else:
        model = models.build_streamed(path, path)
        frozen = apply_freeze(model, model_config)
        metadata = MMSource(path).metadata
    metadata = {key: metadata[key] for key in ("model_type", "hf_names", "model", "parallel") if key in metadata}
    metadata["init_from_hf_path"] = os.path.abspath(path)   # the base of a LoRA run (its identity is checked)
    return model, metadata, frozen


def rank_local(training, world_size):
    """Whether each process loads only its own shard of the weights: a fully sharded or expert-parallel run of
    several processes that does not resume (a resumed one reads the checkpoint whole, then shards it) and has no
    LoRA adapters."""
    return bool(training) and world_size > 1 and not training.get("load") and not training.get("lora") and \
        (training["data_parallel"] == "fully_shard" or training.get("expert_model_parallel_size", 1) > 1)


def shard_units(model_path):
    """The ``FULLY_SHARD_UNITS`` name patterns of the model family's plan (models/<family>/plan.py)."""
    from mmx import models

    package, _ = models.FAMILIES[models.family_of(model_path)]
    return importlib.import_module(f"{package}.plan").FULLY_SHARD_UNITS


def build_data(config):
    """The data pipeline of the config's ``data`` section (model_name_or_path defaults to the model dir)."""
    from mmx.data import build

    data = dict(config["data"])
    data.setdefault("model_name_or_path", config["model"]["init_from_hf_path"])
    return build(data)


def check_data_files(config):
    """ConfigError naming ``data.dataset`` when one of its files does not exist (before the model is built)."""
    from mmx.data.config import load_data_config

    data = dict(config["data"])
    data.setdefault("model_name_or_path", config["model"]["init_from_hf_path"])
    try:
        resolved = load_data_config(data)
    except ValueError as err:
        raise ConfigError(f"data: {err}".replace("data: <dict>: ", "data.")) from err
    missing = [path for path in resolved.dataset if not os.path.isfile(path)]
    if missing:
        where = f" (relative paths: from the working directory {os.getcwd()}, then data.dataset_dir)"
        raise ConfigError(f"data.dataset: {missing[0]} does not exist{where}; fix the path")


def finetune(config, echo=print):
    """Run the config (mmx.train.config.load_config output); returns the Trainer after training."""
    from mmx import backend
    from mmx.convert.hf import copy_support_files

    training = config["training"]
    check_data_files(config)   # a mistyped dataset path fails before the backend import and the model build
    # before the model is built: on an accelerator each process takes its own device
    rank, world_size = backend.get().distributed.init()
    # before the model's memory is allocated
    set_host_memory(training["host_memory"], world_size > 1 and training["data_parallel"] == "fully_shard")
    check_data_parallel(training, world_size)
    if rank:
        def echo(text):  # one process reports
            return None
    elif world_size > 1 and training["data_parallel"] == "fully_shard":
        ep = training["expert_model_parallel_size"]
        echo(f"fully sharded data parallel: {world_size} processes, each holding 1/{world_size} of the "
             f"{backend.get().distributed.SHARDED}" + (f"; every MoE layer's experts split over {ep} expert-parallel "
                                                       f"ranks, each slice sharded over the {world_size // ep} "
                                                       f"rank(s) holding it" if ep > 1 else ""))
    elif world_size > 1 and training["expert_model_parallel_size"] > 1:
        ep = training["expert_model_parallel_size"]
        echo(f"expert parallel: {world_size} processes = {ep} expert-parallel x {world_size // ep} data-parallel, "
             f"each holding 1/{ep} of every MoE layer's experts and the rest of the model whole")
    elif world_size > 1:
        echo(f"data parallel: {world_size} processes, each with the whole model")
    note = prepare_save_dir(training, rank)   # refuses another run's checkpoint before anything is written
    if note:
        echo(note)
    model, metadata, frozen = build_model(config["model"], training, world_size, rank)
    if frozen:   # counted in parameters (elements), not tensors
        sizes = {name: int(np.prod(param.shape)) for name, param in nn_named_parameters(model)}
        echo(f"frozen: {sum(sizes.get(name, 0) for name in frozen):,} parameters in {len(frozen)} tensors "
             f"({', '.join(sorted({n.rsplit('.', 3)[0] for n in frozen})[:6])} ...)")
    pipeline = build_data(config)
    report_data(pipeline, echo)
    if training["save"] and rank == 0:
        copy_support_files(config["model"]["init_from_hf_path"], training["save"])
    stream = None
    if pipeline.dataset is None:
        stream = pipeline.streaming_loader(training["micro_batch_size"], rank, world_size)
    data_settings = {key: getattr(pipeline.config, key) for key in DATA_RESUME_SETTINGS}
    train_set, eval_set = split_data(pipeline, training, world_size)
    trainer = Trainer(model, train_set, pipeline.collate, training, metadata, stream=stream,
                      shard_units=shard_units(config["model"]["init_from_hf_path"]), data_settings=data_settings,
                      sharded_model=rank_local(training, world_size),
                      eval_dataset=eval_set)
    echo(run_summary(trainer, train_set, eval_set, world_size))
    sizes, what = trainer.sizes, ""
    if trainer.lora:
        what = " (LoRA adapters" + (" + modules_to_save)" if trainer.lora["plan"]["modules_to_save"] else ")")
    echo(f"trainable: {sizes['trainable_parameters']:,} of {sizes['total_parameters']:,} parameters{what}, AdamW "
         f"state {sizes['optimizer_state_bytes'] / 2 ** 20:.1f} MiB")
    for note in trainer.resume_notes:
        echo(f"resume: {note}")
    if trainer.iteration:
        echo(f"resumed at iteration {trainer.iteration} ({trainer.consumed_samples} samples consumed)")
    trainer.run()
    if stream is not None and trainer.dropped:
        echo(f"data: {sum(trainer.dropped.values())} samples dropped while streaming: "
             f"{describe_drops(trainer.dropped, pipeline.config.cutoff_len)}")
    return trainer


def nn_named_parameters(model):
    from mmx import nn

    return nn.named_parameters(model)


def split_data(pipeline, training, world_size):
    """(training dataset, eval dataset or None) of ``data.val_size`` (mmx.train.evaluate), and ``train_iters`` from
    ``training.num_train_epochs`` when that is set (ceil(epochs x training samples / global batch))."""
    from mmx.train.evaluate import split_eval

    val_size, ratios = pipeline.config.val_size, pipeline.config.mix_ratios
    if pipeline.dataset is None:
        for key, value in (("data.val_size", val_size), ("training.num_train_epochs", training["num_train_epochs"]),
                           ("data.mix_ratios", ratios)):
            if value:
                raise ConfigError(f"{key} needs a map-style dataset (its size is known up front); with "
                                  f"data.streaming: true set training.train_iters instead, and hold an eval file out "
                                  f"yourself")
        return None, None
    train_set, eval_set = split_eval(pipeline.dataset, val_size, pipeline.config.seed)
    if ratios is not None:   # mmx.data.mixing: each file's share of an epoch, drawn from the training split only
        from mmx.data.mixing import mix_indices, part_of
        from mmx.train.evaluate import Subset

        indices = train_set.indices if eval_set is not None else range(len(pipeline.dataset))
        try:
            train_set = Subset(pipeline.dataset, mix_indices(pipeline.dataset, indices, ratios, pipeline.config.seed))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        train_set.per_file = [sum(1 for i in train_set.indices if part_of(pipeline.dataset, i) == part)
                              for part in range(len(ratios))]
    if training["num_train_epochs"]:
        training["train_iters"] = max(1, math.ceil(training["num_train_epochs"] * len(train_set) /
                                                   training["global_batch_size"]))
    return train_set, eval_set


def run_summary(trainer, train_set, eval_set, world_size):
    """The start-up line: samples (training / eval), the effective batch, iterations and epochs."""
    training = trainer.training
    micro, global_batch = training["micro_batch_size"], training["global_batch_size"]
    accumulation = global_batch // (micro * world_size)
    line = "run: "
    if train_set is not None:
        line += f"{len(train_set)} training samples" + (f" + {len(eval_set)} eval (data.val_size)" if eval_set else "")
        mixed = getattr(train_set, "per_file", None)
        if mixed:
            line += f" (data.mix_ratios: {' + '.join(map(str, mixed))} per file)"
        line += "; "
    line += (f"global batch {global_batch} = micro-batch {micro} x {accumulation} accumulation steps x "
             f"{world_size} process{'es' if world_size > 1 else ''}; {training['train_iters']} iterations")
    if train_set is not None:
        line += f" = {training['train_iters'] * global_batch / len(train_set):.2f} epochs"
    if eval_set is not None:
        line += f"; eval every {training['eval_interval'] or training['train_iters']} iterations"
    return line


def report_data(pipeline, echo):
    """The start-up data summary: samples kept and every dropped one counted by reason; a ConfigError naming the
    counts and reasons when nothing is left."""
    if pipeline.dataset is None:
        echo("data: streaming; dropped samples are counted as they are read (metrics.jsonl dropped_samples)")
        return
    stats = pipeline.dataset.stats
    echo(summary_line(stats))
    if not len(pipeline.dataset):
        raise ConfigError(f"the training dataset is empty: {empty_reason(stats)}")
