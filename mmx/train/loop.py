"""The framework-free training loop: sampling, micro-batching, loss weights, checkpoint/resume, logging.

The backend supplies the step (``backend.train``: AdamW, gradient accumulation, clipping); this file decides what
goes into each step and when to save. One optimizer step consumes ``global_batch_size`` samples as
``global_batch_size / micro_batch_size`` micro-batches whose gradients are summed (loss weights in mmx.train.loss).

Sample order: epoch ``e`` visits the dataset in ``RandomState(seed + e).permutation(n)``; the data position saved in
checkpoints is the number of samples consumed, so a resumed run draws exactly the batches the uninterrupted run
would have drawn. A streaming source (``stream``: ``next_batch()`` of ``micro_batch_size`` samples, ``state_dict()``,
``load_state_dict()``, e.g. mmx.data's StreamingLoader) is checkpointed through its own state instead.

Data parallel (a torchrun / msrun launch of N processes; ``backend.distributed``): every rank holds the whole model
and optimizer, draws the same global batch indices, and takes micro-batches ``rank, rank + N, ...`` of it, so the
global batch (and with it every loss weight) is the same for any N. The counts behind the loss weights and the
tokens/s are summed over ranks before the step, the gradients and the loss after the backward, before clipping;
every rank then applies the same update. Rank 0 alone writes checkpoints (the others wait) and logs.

Run bookkeeping: the save directory holds one run (mmx.train.checkpoint.prepare_save_dir refuses another run's
checkpoint there); every checkpoint records the run's settings (mmx.train.config.RESUME_SETTINGS) and a resume that
changes one is refused with the change named, unless ``training.allow_changed`` lists it; a checkpoint is written
only when its weights and moments are usable (finite, weights below UNUSABLE_MAGNITUDE); dropped samples are counted
in the first metrics record of the run (``dropped_samples``; streaming: also each record where the count grew).

Fully sharded (``training.data_parallel: fully_shard``): after loading and broadcasting the weights, the backend
shards what it shards (``distributed.fully_shard`` with the model's units, its plan's ``FULLY_SHARD_UNITS``: decoder
layers, vision blocks, and the root; then ``distributed.shard_optimizer``). On torch (FSDP2, ZeRO-3) every rank holds
1/N of the weights, gradients and AdamW moments, and the sharded backward already sums the gradients over the ranks
(reduce-scatter), so the step sums only the loss; on MindSpore (ZeRO-1) every rank holds the whole weights and
gradients and 1/N of the moments, updates its own parameters and sends them to the others. The clip uses the whole
gradients' norm. Checkpoints are the same whole tensors: every rank takes part in gathering them, one at a time,
and rank 0 writes each to the file and drops it before the next (no process holds the whole model at a save);
loading fills the model before it is sharded, and the optimizer keeps each rank's share of the moments.
"""
import inspect
import json
import os
import re
import time

import numpy as np

from mmx import backend as _backend
from mmx import expert_parallel, lora, nn, ops
from mmx.train import checkpoint as ckpt
from mmx.data.dataset import DROP_KINDS, drop_counts, empty_reason
from mmx.train.config import ConfigError, check_data_parallel, compare_run_settings, run_settings, settings_error, \
    warmup_iters
from mmx.train.flops import StepFlops, peak_flops, step_flops
from mmx.train.loss import loss_counts, shifted_targets, token_weights, weighted_lm_loss
from mmx.train.metrics import MetricsLogger, measure_matmul_peak
from mmx.train.schedule import LRSchedule

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
# Batch keys that are integer metadata for the host (grids, window/rope indices), passed to the model as numpy.
# A model also gets as numpy the inputs its class lists in ``host_inputs`` (the Qwen-VL models: input_ids,
# attention_mask, position ids, which they read on the host anyway): a tensor there would be read straight back, a
# device -> host sync per micro-batch (tests/train/test_host_reads.py).
HOST_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "cu_seqlens", "logits_positions")


def train_step(steps, params, optimizer, loss_fn, micro_batches, lr, max_grad_norm, precision="fp32", comm=None,
               sharded=False, experts=None):
    """One optimizer step on a global batch with the backend's ``steps`` (its train module): (loss, grad norm
    before clipping) as floats.

    ``comm`` (the backend's distributed module; None in one process): ``micro_batches`` are this rank's share, and
    the gradients and the loss are summed over the ranks before clipping, so the norm, the clip and the update are
    the global batch's, identical on every rank. ``sharded``: a ``fully_shard`` run; the backend decides what is
    still to sum (``comm.sum_gradients``: torch's sharded backward already reduce-scattered the gradients, MindSpore
    shards only the optimizer state and all-reduces them as in replicate). ``experts``: an expert-parallel run's
    mmx.expert_parallel.ExpertParallel, which sums the expert gradients over the ranks holding the same experts and
    takes the norm over the whole model. A non-finite loss or gradient norm skips the update and is returned as is (on every rank),
    so the loop can stop with the last good weights.
    """
    loss, grads = steps.accumulate_grads(params, loss_fn, micro_batches, precision)
    if comm is not None:
        grads = comm.sum_gradients(grads, sharded) if experts is None else experts.sum_gradients(grads, sharded)
        loss = float(comm.all_reduce_numpy(np.array([loss], np.float64))[0])
    if experts is None:
        grads, norm = steps.clip_grad_norm(grads, max_grad_norm)
    else:
        grads, norm = experts.clip_grad_norm(steps, grads, max_grad_norm)
    if np.isfinite(loss) and np.isfinite(norm):
        optimizer.step(grads, lr)
    return loss, norm


def gather_objects(comm, obj):
    """[rank 0's ``obj``, rank 1's, ...] on every rank, for JSON-ready ``obj`` (streaming positions, sample ids)."""
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = comm.all_gather_numpy(np.array([data.size], np.int64))[:, 0]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    return [json.loads(row[:size].tobytes()) for row, size in zip(comm.all_gather_numpy(padded), lengths)]


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf, or the weights unusable; nothing bad was applied or saved."""


class Sampler:
    """Dataset indices for consumed-sample positions: a fresh seeded permutation per epoch."""

    def __init__(self, num_samples, seed, why_empty=None):
        if num_samples < 1:
            raise ConfigError(f"the training dataset is empty: {why_empty or 'it holds no sample'}")
        self.num_samples, self.seed = num_samples, seed
        self._epoch, self._order = None, None

    def _permutation(self, epoch):
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.RandomState(self.seed + epoch).permutation(self.num_samples)
        return self._order

    def indices(self, start, count):
        """Dataset indices of consumed positions ``[start, start + count)``."""
        return [int(self._permutation(p // self.num_samples)[p % self.num_samples])
                for p in range(start, start + count)]


def aux_loss_coef(training, model):
    """The MoE load-balancing loss weight: ``training.router_aux_loss_coef``, or (null) the checkpoint's (its
    ``router_aux_loss_coef`` when ``output_router_logits``, read into the model config); 0 for dense models."""
    text = getattr(getattr(model, "config", None), "text", None)
    if not getattr(text, "num_experts", 0):
        if training.get("router_aux_loss_coef"):
            raise ConfigError(f"training.router_aux_loss_coef {training['router_aux_loss_coef']}: this model has no "
                              f"MoE layers (no load-balancing loss); remove the key")
        return 0.0
    coef = training.get("router_aux_loss_coef")
    return float(text.router_aux_loss_coef if coef is None else coef)


def model_inputs(model, batch):
    """The keyword arguments of ``model.forward`` found in ``batch``: tensors, except integer host metadata
    (:data:`HOST_KEYS` and the model's ``host_inputs``), which stays numpy."""
    accepted = inspect.signature(model.forward).parameters
    host = HOST_KEYS + tuple(getattr(model, "host_inputs", ()))
    inputs = {}
    for key, value in batch.items():
        if key not in accepted or value is None or key == "labels":
            continue
        inputs[key] = np.asarray(value) if key in host else ops.tensor(np.asarray(value))
    return inputs


def prepare_micro_batch(model, batch, weights):
    """(model inputs, targets (N,), weights (N,)) of one micro-batch with loss ``weights`` (B, S) (mmx.train.loss).

    Only the N positions with a non-zero weight get logits: the model is asked for ``logits_positions`` when it
    takes them, so prompt, image and padding positions never reach the output layer (with a 150k vocabulary that
    layer is most of a small VLM's FLOPs and its logits most of the activation memory). A micro-batch with nothing
    supervised keeps one position at weight 0, so its forward and backward still run on every rank.
    """
    inputs = model_inputs(model, batch)
    targets, weights = shifted_targets(batch).reshape(-1), np.asarray(weights, np.float32).reshape(-1)
    if "logits_positions" in inspect.signature(model.forward).parameters:
        positions = np.flatnonzero(weights) if weights.any() else np.zeros(1, np.int64)
        inputs["logits_positions"] = positions
        targets, weights = targets[positions], weights[positions]
    return inputs, ops.tensor(targets), ops.tensor(weights)


def lm_loss(model, inputs, targets, weights, return_aux_loss=False):
    """The weighted LM loss (mmx.train.loss) of a micro-batch from :func:`prepare_micro_batch` (and the MoE
    load-balancing loss with ``return_aux_loss``). A model that takes ``loss_targets`` computes it itself from its
    last hidden states, in row chunks (ops.linear_cross_entropy: no float32 (N, V) logits, no separate log-softmax
    passes); any other model gives logits and the loss is taken from them."""
    extra = {"return_aux_loss": True} if return_aux_loss else {}
    if "loss_targets" in inspect.signature(model.forward).parameters:
        return model(**inputs, loss_targets=targets, loss_weights=weights, **extra)
    out = model(**inputs, **extra)
    if return_aux_loss:
        return weighted_lm_loss(out[0], targets, weights), out[1]
    return weighted_lm_loss(out, targets, weights)


def shard_unit_names(model, patterns):
    """Dotted names of ``model``'s submodules matching ``patterns`` (a plan's ``FULLY_SHARD_UNITS``, e.g.
    ``"text_decoder.decoder.layers.{j}."``: ``{i}`` / ``{j}`` stand for any index), in parameter order."""
    index = re.escape("{i}"), re.escape("{j}")
    regexes = [re.compile(re.escape(pattern).replace(index[0], "[0-9]+").replace(index[1], "[0-9]+"))
               for pattern in patterns]
    names = []
    for name, _ in nn.named_parameters(model):
        for regex in regexes:
            found = regex.match(name)
            if found and found.group(0).rstrip(".") not in names:
                names.append(found.group(0).rstrip("."))
    return names


def count_tokens(batch):
    """Real (unpadded) tokens of a batch: the attention mask's sum, or every position without one."""
    mask = batch.get("attention_mask")
    return int(np.asarray(mask).sum()) if mask is not None else int(np.asarray(batch["input_ids"]).size)


def sample_ids(batch, indices):
    """Ids for error messages: the batch's ``sample_ids`` when the data pipeline gives them, else dataset indices."""
    ids = batch.get("sample_ids")
    return [str(i) for i in ids] if ids is not None else [f"#{i}" for i in indices]


class Trainer:
    """Runs ``training`` (the config's training section) on ``model`` over ``dataset`` (len + getitem) batched by
    ``collate`` (list of samples → numpy batch dict with ``input_ids``, ``labels`` (-100 ignored) and the model's
    other inputs). ``metadata`` (model type, dtype, ...) goes into every checkpoint with the backend tag.

    Launched as several processes (torchrun / msrun), it trains data parallel (module docstring); ``stream`` must
    then be this rank's shard (mmx.data's ``streaming_loader(batch_size, rank, world_size)``). ``shard_units``: the
    model's ``FULLY_SHARD_UNITS`` name patterns (its plan) for ``data_parallel: fully_shard``; without them the whole
    model is one unit. ``sharded_model``: ``model`` is already fully sharded with each rank's shard loaded
    (``distributed.load_fully_sharded``), or holds this rank's experts only (``expert_parallel.load_rank_local``),
    so it is neither broadcast nor sharded here.
    """

    def __init__(self, model, dataset, collate, training, metadata=None, log_dir=None, stream=None, shard_units=(),
                 data_settings=None, eval_dataset=None, sharded_model=False):
        self.backend = _backend.get()
        self.comm = self.backend.distributed
        self.rank, self.world_size = self.comm.init()
        check_data_parallel(training, self.world_size)
        self.resume_notes = []
        note = ckpt.prepare_save_dir(training, self.rank)   # before anything is written there
        if note:
            self.resume_notes.append(note)
        # recorded in every checkpoint, compared on resume; data_settings: the data keys of DATA_RESUME_SETTINGS
        self.run_settings = run_settings(training, data_settings)
        self.model, self.dataset, self.collate, self.stream = model, dataset, collate, stream
        self.eval_dataset = eval_dataset   # data.val_size's held-out samples (mmx.train.evaluate), or None
        self.training = training
        self.metadata = dict(metadata or {})
        # logs go in SAVE/logs: files at the save dir's top are the checkpoint's support files (mm_to_hf copies them)
        self.log_dir = log_dir or training.get("log_dir") or os.path.join(training.get("save") or ".", "logs")
        # the backend's train module: AdamW, accumulate_grads, clip_grad_norm, RNG state
        self.steps = _backend.get().train
        self.steps.set_seed(training["seed"])
        stats = getattr(dataset, "stats", None)
        self.sampler = None if stream is not None else Sampler(len(dataset), training["seed"],
                                                               empty_reason(stats) if stats else None)
        # {kind: count} of dropped samples: a map-style dataset's are known now, a stream's grow as it is read
        self.dropped = drop_counts(stats["bad"], stats["dropped"]) if stats else {}
        self._logged_dropped = None
        self._logged_sizes = False
        self.schedule = LRSchedule(training["lr"], training["train_iters"], training["min_lr"],
                                   warmup_iters(training), training["lr_decay_style"], training["lr_decay_iters"])
        self.iteration, self.consumed_samples, self.history = 0, 0, []
        self.aux_loss_coef = aux_loss_coef(training, model)
        self._aux_losses, self._micro_batches = [], 1
        # LoRA (mmx.lora): adapters on the model, every other weight frozen; checkpoints hold checkpoint_names only
        self.lora, self.checkpoint_names = None, None
        if training.get("lora"):
            self.lora, self.checkpoint_names = lora.setup_training(model, training, self.metadata)
            self.metadata["lora"] = self.lora
        if training.get("load"):
            self._load_model(training["load"])
        # every rank read the same files; the broadcast also covers weights a model initialised at random
        if not sharded_model:
            self.comm.broadcast_parameters([param for _, param in nn.named_parameters(model)])
        # expert parallel: each rank keeps its slice of every stacked-expert tensor (mmx.expert_parallel); under
        # fully_shard the slices are then sharded over the ranks holding the same experts
        self.experts = expert_parallel.setup(model, training, self.rank, self.world_size, self.comm)
        if training["data_parallel"] == "fully_shard" and not sharded_model:  # the parameters become shards
            experts = (self.experts.modules, self.experts.ep_size) if self.experts is not None else ()
            self.model = self.comm.fully_shard(model, shard_unit_names(model, shard_units), *experts)
        self.sharded = training["data_parallel"] == "fully_shard" and self.world_size > 1
        if training.get("compile"):   # after sharding: each unit's gathers run around its compiled forward
            self._compile(shard_units)
        self.named_params = self.steps.trainable_parameters(self.model)
        if not self.named_params:
            raise ConfigError("every parameter is frozen (model.*.freeze); nothing would train")
        self.params = [param for _, param in self.named_params]
        self.sizes = lora.size_summary(self.model, self.params)   # trainable count, AdamW state bytes
        adamw = (self.named_params, (training["adam_beta1"], training["adam_beta2"]), training["adam_eps"],
                 training["weight_decay"])
        # fully_shard: torch's moments follow their sharded parameters, MindSpore's are split over the ranks (ZeRO-1)
        self.optimizer = (self.comm.shard_optimizer(self.steps.AdamW, *adamw) if self.sharded
                          else self.steps.AdamW(*adamw))
        if self.experts is not None:   # whole expert moments in checkpoints, this rank's slice in memory
            self.experts.bind(self.named_params)
            self.optimizer = expert_parallel.ExpertOptimizer(self.optimizer, self.experts)
        if training.get("load") and self._loaded is not None:
            self._load_state(self._loaded)
        self._loaded = None
        self.last_saved = ckpt.read_latest(training["save"], self.rank == 0) if training["save"] else None

    def _compile(self, shard_units):
        """``training.compile``: one compiled region per decoder layer / vision block (the plan's
        ``FULLY_SHARD_UNITS``; without them the whole model is one region), as torchtitan compiles torch models;
        the host metadata (positions, masks, cu_seqlens) is prepared outside the regions."""
        try:   # a backend without compiled regions refuses the key (ValueError naming it and the fix)
            self.steps.compile_regions(self.model, shard_unit_names(self.model, shard_units) if shard_units else [""])
        except ValueError as err:
            raise ConfigError(str(err)) from err

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _load_model(self, load_dir):
        self._loaded = None
        if ckpt.read_latest(load_dir, recover=self.rank == 0) is None:
            self.resume_notes.append(f"{load_dir} holds no checkpoint yet ({ckpt.LATEST} missing): starting at "
                                     f"iteration 0 from the model's initial weights")
            return
        loaded = ckpt.load_checkpoint(load_dir, recover=False)   # read_latest above recovered it
        if self.lora is not None:   # adapters (+ modules_to_save) on the base model they were trained on
            lora.check_base(self.lora, loaded["metadata"].get("lora"), load_dir)
            lora.load_adapters(self.model, loaded["model"], self.lora["plan"], load_dir)
        else:
            nn.load_state_dict(self.model, {name: ops.tensor(value) for name, value in loaded["model"].items()})
        self._loaded = loaded

    def _load_state(self, loaded):
        state, training = loaded["trainer_state"], self.training
        self.iteration = int(loaded["iteration"]) if loaded["iteration"] != "release" else 0
        self.consumed_samples = int(state.get("consumed_samples", 0))
        self.history = list(state.get("history", []))
        self._check_settings(loaded)
        saved_world_size = int(state.get("world_size", 1))
        if self.stream is not None:
            if state.get("data_state") is None:
                raise ConfigError(f"{training['load']}: the checkpoint has no streaming data state (it was trained on "
                                  f"a map-style dataset); resume with the same data.streaming setting")
            if saved_world_size != self.world_size:
                raise ConfigError(f"{training['load']}: the streaming position was saved by {saved_world_size} "
                                  f"data-parallel processes and this run has {self.world_size}; each process reads "
                                  f"its own shard of the stream, so resume with {saved_world_size} processes")
            states = state["data_state"]
            self.stream.load_state_dict(states[self.rank] if saved_world_size > 1 else states)
        elif state.get("data_state") is not None:
            raise ConfigError(f"{training['load']}: the checkpoint was trained on streaming data (its position is a "
                              f"stream state, not a sample count); resume with the same data.streaming setting")
        elif saved_world_size != self.world_size:
            self.resume_notes.append(f"trained by {saved_world_size} data-parallel processes so far, now "
                                     f"{self.world_size}: the global batches are the same (micro-batches are dealt to "
                                     f"the ranks), only the order of the gradient sums changes")
        saved_mode = state.get("data_parallel", "replicate")
        if saved_mode != training["data_parallel"]:
            self.resume_notes.append(f"written by a {saved_mode} run, continued {training['data_parallel']}: the "
                                     f"checkpoint holds whole tensors either way")
        saved_by = loaded["metadata"].get("backend")
        if not training["no_load_optim"]:
            if loaded["optimizer"] is None:
                raise FileNotFoundError(f"{training['load']}: iteration {self.iteration} has no optimizer state "
                                        f"(saved with no_save_optim); resume with no_load_optim: true")
            self.optimizer.load_state_dict(loaded["optimizer"])
            if saved_by != self.backend.NAME:
                self.resume_notes.append(f"optimizer state written by {saved_by} converted to {self.backend.NAME} "
                                         f"(step {loaded['optimizer']['step']}, moments of "
                                         f"{len(loaded['optimizer']['exp_avg'])} parameters)")
        if not training["no_load_rng"] and loaded["rng"] is not None:
            if not self.steps.set_rng_state(loaded["rng"]):
                self.steps.set_seed(training["seed"] + self.iteration)
                self.resume_notes.append(f"generator state written by {saved_by} cannot be used by "
                                         f"{self.backend.NAME}; re-seeded with seed + iteration "
                                         f"({training['seed'] + self.iteration})")

    def _check_settings(self, loaded):
        """Refuse a resume that changes a recorded setting (ConfigError naming each change), unless allowed; notes
        for the allowed ones and for a schedule that train_iters stretched."""
        state, training = loaded["trainer_state"], self.training
        saved = state.get("run_settings") or {key: state[key] for key in ("seed", "global_batch_size", "loss_type")
                                              if key in state}
        refused, accepted = compare_run_settings(saved, self.run_settings, training["allow_changed"])
        if refused:
            raise settings_error(training["load"], loaded["iteration"], refused)
        for name, old, new in accepted:
            self.resume_notes.append(f"{name} changed {old!r} -> {new!r} (training.allow_changed)")
        schedule = state.get("schedule") or {}
        for key, what in (("decay_iters", "decays"), ("warmup_iters", "warms up")):
            if key in schedule and schedule[key] != getattr(self.schedule, key):
                self.resume_notes.append(f"the lr schedule now {what} over {getattr(self.schedule, key)} iterations "
                                         f"(was {schedule[key]}: it follows train_iters {training['train_iters']})")

    def _refuse_unusable(self, found):
        """Raise NonFiniteLossError (on every rank) when rank 0 found unusable tensors while streaming the save
        (``found``: its reasons; [] on the other ranks): a collective, called once all tensors are gathered."""
        if self.world_size > 1 and int(self.comm.all_reduce_numpy(np.array([len(found)], np.int64))[0]) and \
                not found:
            found = ["(rank 0 found unusable tensors)"]
        if found:
            raise NonFiniteLossError(
                f"iteration {self.iteration}: the weights are unusable ({'; '.join(found[:3])}"
                f"{'; ...' if len(found) > 3 else ''}), though the loss and gradient norm were finite; no checkpoint "
                f"was written. Last good checkpoint: {self._last_good()}")

    def _model_stream(self):
        """(name, whole numpy tensor; None on ranks other than 0) of every saved model tensor, each gathered when
        it is drawn (a collective for a shard or an expert slice: the ranks taking part draw them all, in order)."""
        for name, value in nn.state_dict(self.model).items():
            if self.checkpoint_names is not None and name not in self.checkpoint_names:
                continue   # LoRA: the base model is named by metadata lora.base, not copied
            whole = self.comm.full_tensor(value)  # a collective for a shard
            if self.experts is not None:   # an expert slice: gathered from the ranks of EP group 0
                whole = self.experts.full(name, ops.to_numpy(whole))
            yield name, (ops.to_numpy(whole) if self.experts is None else whole) if self.rank == 0 else None
            del whole   # gone before the next one is gathered

    def save(self):
        """Write the current state as checkpoint ``iteration`` under ``training.save``; returns its directory.

        Every rank calls this: the streaming positions of all ranks are gathered, rank 0 writes (model and optimizer
        are identical on every rank; a sharded model's and moments are gathered whole by all ranks, one tensor at a
        time, and rank 0 writes each to the checkpoint file and drops it before the next, so no process holds the
        whole model or moments), and the others wait until the checkpoint is complete. Each tensor is checked as it
        streams; unusable weights or moments raise NonFiniteLossError on every rank and leave no checkpoint.
        """
        training = self.training
        data_state = None
        if self.stream is not None:
            states = gather_objects(self.comm, self.stream.state_dict())
            data_state = states if self.world_size > 1 else states[0]
        if self.rank == 0 or self.sharded or self.experts is not None:
            model_stream = self._model_stream()
            optimizer_stream = None if training["no_save_optim"] else \
                self.optimizer.stream_state(gather_only=self.rank != 0)
        else:   # replicated: rank 0 alone reads its own whole copies
            model_stream, optimizer_stream = iter(()), None
        if self.rank == 0:
            trainer_state = {"iteration": self.iteration, "consumed_samples": self.consumed_samples,
                             "schedule": self.schedule.state_dict(), "history": self.history,
                             "loss_type": training["loss_type"], "global_batch_size": training["global_batch_size"],
                             "seed": training["seed"], "world_size": self.world_size,
                             "data_parallel": training["data_parallel"], "data_state": data_state,
                             "run_settings": self.run_settings}
            ckpt.save_checkpoint(
                training["save"], self.iteration, model_stream, dict(self.metadata, backend=self.backend.NAME),
                trainer_state, optimizer_stream, None if training["no_save_rng"] else self.steps.get_rng_state(),
                check=self._refuse_unusable)
            ckpt.finish_overwrite(training["save"])   # a replaced run's directory goes once this one is complete
            ckpt.prune_checkpoints(training["save"], training["save_total_limit"])   # the newest K stay
        else:   # take part in every gather, in rank 0's order
            for _ in model_stream:
                pass
            for _ in optimizer_stream[1] if optimizer_stream is not None else ():
                pass
            self._refuse_unusable([])
        self.comm.barrier()
        self.last_saved = self.iteration
        return str(ckpt.iteration_dir(training["save"], self.iteration))

    # -- the loop ------------------------------------------------------------------------------------------------

    def global_batch(self):
        """(this rank's micro-batches as numpy dicts, their dataset indices (None when streaming)) of the next global
        batch: micro-batch ``k`` of it belongs to rank ``k % world_size``."""
        training = self.training
        micro = training["micro_batch_size"]
        count = training["global_batch_size"] // micro
        if self.stream is not None:
            return [self.stream.next_batch() for _ in range(count // self.world_size)], None
        indices = self.sampler.indices(self.consumed_samples, training["global_batch_size"])
        mine = [indices[k * micro:(k + 1) * micro] for k in range(self.rank, count, self.world_size)]
        return [self.collate([self.dataset[i] for i in part]) for part in mine], [i for part in mine for i in part]

    def _loss_fn(self, prepared):
        inputs, targets, weights = prepared
        if not self.aux_loss_coef:
            return lm_loss(self.model, inputs, targets, weights)
        # MoE: + coef x this micro-batch's load-balancing loss / micro-batches in the global batch (their mean)
        loss, aux = lm_loss(self.model, inputs, targets, weights, return_aux_loss=True)
        self._aux_losses.append(aux)
        return loss + aux * (self.aux_loss_coef / self._micro_batches)

    def step(self):
        """One optimizer step; returns its metrics record. Raises NonFiniteLossError naming step and samples."""
        training = self.training
        batches, indices = self.global_batch()
        # [supervised tokens, supervised samples, micro-batches, real tokens] of the whole global batch
        local = np.append(loss_counts(batches), sum(map(count_tokens, batches)))
        if self.stream is not None and hasattr(self.stream, "drop_counts"):
            dropped = self.stream.drop_counts()
            local = np.append(local, [dropped.get(kind, 0) for kind in DROP_KINDS])
        counts = self.comm.all_reduce_numpy(local)
        weights = token_weights(batches, training["loss_type"], global_counts=counts[:3])
        prepared = [prepare_micro_batch(self.model, batch, weight) for batch, weight in zip(batches, weights)]
        self._micro_batches, self._aux_losses = int(counts[2]), []
        flops = step_flops(self.flop_counter, [inputs for inputs, _, _ in prepared])   # executed, mmx.train.flops
        if self.world_size > 1:
            flops = float(self.comm.all_reduce_numpy(np.array([flops], np.float64))[0])
        lr = self.schedule(self.iteration)
        start = time.perf_counter()
        loss, grad_norm = train_step(self.steps, self.params, self.optimizer, self._loss_fn, prepared, lr,
                                     training["clip_grad"], training["precision"],
                                     self.comm if self.world_size > 1 else None, self.sharded, self.experts)
        seconds = time.perf_counter() - start
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            micro = training["micro_batch_size"]
            ids = [sid for k, batch in enumerate(batches)
                   for sid in sample_ids(batch, (indices or [])[k * micro:(k + 1) * micro])]
            if self.world_size > 1:  # the global batch's samples, with the rank that computed them
                ids = [f"{sid} (rank {rank})" for rank, rank_ids in enumerate(gather_objects(self.comm, ids))
                       for sid in rank_ids]
            raise NonFiniteLossError(
                f"step {self.iteration + 1}: loss {loss}, grad norm {grad_norm} (not finite) on samples "
                f"{', '.join(ids)}; the update was not applied. Last good checkpoint: {self._last_good()}")
        self.iteration += 1
        self.consumed_samples += training["global_batch_size"]
        tokens = int(counts[3])
        self.history.append(loss)
        if self.stream is not None and hasattr(self.stream, "drop_counts"):
            totals = counts[4:]   # every rank's stream drops, summed with the step's counts
            self.dropped = {kind: int(n) for kind, n in zip(DROP_KINDS, totals) if n}
        extra = None
        if self.dropped != self._logged_dropped:   # the run's first record, and a stream's growing count
            extra = {"dropped_samples": {"total": sum(self.dropped.values()), "by_kind": dict(self.dropped)}}
            self._logged_dropped = dict(self.dropped)
        if not self._logged_sizes:   # the run's first record: the trainable parameters and their AdamW state
            extra, self._logged_sizes = dict(extra or {}, **self.sizes), True
        if self.aux_loss_coef:   # the load-balancing loss on its own: the mean over the global batch's micro-batches
            local = np.array([sum(float(ops.to_numpy(aux)) for aux in self._aux_losses), len(self._aux_losses)])
            total, count = self.comm.all_reduce_numpy(local) if self.world_size > 1 else local
            extra = dict(extra or {}, aux_loss=float(total / max(count, 1)))
        return self.logger.log(self.iteration, loss, lr, grad_norm, tokens, seconds, training["global_batch_size"],
                               extra, flops)

    def _last_good(self):
        """The last checkpoint of this run (or of the one it resumed): only usable weights are ever saved."""
        last = self.last_saved if self.training["save"] else None
        return ckpt.iteration_dir(self.training["save"], last) if last is not None else "none saved"

    def _flop_counter(self):
        """mmx.train.flops.StepFlops of the model with its current freeze flags (the whole tensors' shapes)."""
        config = getattr(self.model, "config", None)
        config = config if hasattr(config, "text") and hasattr(config, "vision") else None
        shapes = [(name, self.experts.whole_shape(name, param.shape) if self.experts else tuple(param.shape))
                  for name, param in nn.named_parameters(self.model)]
        return StepFlops(config, shapes, [name for name, _ in self.named_params])

    evaluated = None

    def evaluate(self):
        """The eval split's loss now (mmx.train.evaluate), logged as ``eval_loss``; returns its record."""
        from mmx.train.evaluate import eval_loss

        start = time.perf_counter()
        loss, samples = eval_loss(self, self.eval_dataset)
        self.evaluated = self.iteration
        return self.logger.log_eval(self.iteration, loss, samples, time.perf_counter() - start)

    def run(self):
        """Train until ``train_iters``, saving every ``save_interval`` steps and at the end; the step records."""
        training = self.training
        self.flop_counter = self._flop_counter()
        peak, self.peak_source = None, None
        if self.rank == 0:  # one device's peak in the dtype the matmuls run in (mmx.train.flops.peak_flops)
            dtype = "bf16" if training["precision"] == "bf16" else "fp32"
            peak, self.peak_source = peak_flops(training["peak_tflops"], self.steps.device_name(), dtype,
                                                lambda: measure_matmul_peak(dtype=getattr(ops, DTYPES[dtype])))
        self.logger = MetricsLogger(self.log_dir, training["train_iters"], training["log_interval"],
                                    peak * self.world_size if peak else None, training["progress_bar"],
                                    training["log_tps"], first_step=self.iteration, output=self.rank == 0,
                                    devices=self.world_size)
        records = []
        try:
            while self.iteration < training["train_iters"]:
                records.append(self.step())
                if self.eval_dataset is not None and training["eval_interval"] and \
                        self.iteration % training["eval_interval"] == 0:
                    self.evaluate()
                if training["save"] and training["save_interval"] and self.iteration % training["save_interval"] == 0:
                    self.save()
            if self.eval_dataset is not None and self.evaluated != self.iteration:
                self.evaluate()   # the end of every run with an eval split
            if training["save"] and self.last_saved != self.iteration:
                self.save()
        finally:
            self.curve = self.logger.finish()
        return records

