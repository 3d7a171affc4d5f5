"""Expert parallel training (``training.expert_model_parallel_size``), framework-free: which experts a rank holds,
the dispatch plan, and the two dispatchers, written against mmx.ops and the backend's distributed module.

Layout (Megatron's): the world of N processes is N / EP groups of EP consecutive ranks; rank r is expert-parallel
rank ``r % EP`` of group ``r // EP`` and holds experts ``e * E / EP .. (e + 1) * E / EP - 1`` (e = r % EP) of every
MoE layer, renumbered from 0 (the EP layout ``mmx.checkpoint.shard.is_expert`` names). Every rank trains its own
micro-batches (data parallel over all N, as without EP); the non-expert parameters are whole on every rank and their
gradients are summed over all N; a rank's expert gradients are summed over the N / EP ranks holding the same experts
(its expert-data-parallel group). With ``data_parallel: fully_shard`` (torch: ``distributed.EXPERT_FULLY_SHARD``)
the dense part is sharded over all N ranks and each rank's expert slice is its own FSDP unit over its
expert-data-parallel group (torchtitan's layout), whose backward does both gradient sums.

Dispatch (``distributed.EXPERT_DISPATCH``):

- ``all_to_all`` (torch): the (token, k) assignments are sorted by expert; the per-expert counts are exchanged
  first (an all-to-all of E counts), then the token rows go to the ranks holding their experts (all-to-all with
  those splits, differentiable), the local experts run on what arrived (``ops.moe_experts``, one expert per row),
  the outputs go back the same way and each token sums its K outputs times its routing weights.
- ``all_gather`` (MindSpore on CPU, which has no all-to-all): every rank places its tokens and routing weights in its
  slot of a (N x T_max) buffer and an all-reduce (differentiable: its gradient is an all-reduce) gives every rank all
  tokens; each rank computes its local experts' share for the tokens of its own EP group (the other assignments
  weighted 0), an all-reduce sums the shares, and each rank keeps its slot.

Checkpoints keep whole stacked tensors: saving gathers each expert tensor (one at a time) from the ranks of EP group
0, so checkpoints move between EP sizes and backends. Loading is rank-local (:func:`load_rank_local`, ``mmx
finetune`` from an mm checkpoint of any TP / PP / EP layout): the model is built without weight storage and each
rank reads only its own experts' rows of every stacked-expert tensor (plus the dense tensors whole), so no process
holds or reads another rank's experts. A resumed run (``training.load``) or an HF init still fills the model whole,
then each rank keeps its slice.
"""
import re

import numpy as np

from mmx import nn, ops
from mmx.train.config import ConfigError

STACKED = re.compile(r"(.+\.experts)\.linear_fc[12]\.weight$")


class ExpertParallelError(ConfigError):
    """An expert_model_parallel_size that does not fit the model or the launch (the message names the fix)."""


def local_experts(num_experts, ep_size, ep_rank):
    """range of the global expert indices expert-parallel rank ``ep_rank`` of ``ep_size`` holds."""
    per = num_experts // ep_size
    return range(ep_rank * per, (ep_rank + 1) * per)


def dispatch_plan(chosen, num_experts, ep_size):
    """The all-to-all plan of a rank's routing: ``chosen`` (T, K) global expert indices →
    (order (T*K,): the assignments sorted by expert (stable), counts (E,): assignments per expert,
    send (EP,): rows for each EP rank, in ``order``)."""
    flat = np.asarray(chosen, np.int64).reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_experts).astype(np.int64)
    send = counts.reshape(ep_size, -1).sum(axis=1)
    return order, counts, send


def _submodule(model, dotted):
    module = model
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def stacked_experts(model, ep_size):
    """(parameter name, its StackedExperts module, the module holding the parameter) of every stacked-expert tensor
    of ``model``; ExpertParallelError when there is none or ``ep_size`` does not divide a layer's experts."""
    from mmx.models.common.moe import StackedExperts

    params = dict(nn.named_parameters(model))
    modules = sorted({found.group(1) for found in map(STACKED.match, params) if found})
    modules = [name for name in modules if isinstance(_submodule(model, name), StackedExperts)]
    if not modules:
        raise ExpertParallelError(f"training.expert_model_parallel_size={ep_size}: this model has no MoE layers "
                                  f"(stacked experts); set expert_model_parallel_size: 1")
    found = []
    for name in modules:
        experts = _submodule(model, name)
        total = getattr(experts, "whole_experts", None) or int(experts.linear_fc1.weight.shape[0])
        if total % ep_size:
            raise ExpertParallelError(f"training.expert_model_parallel_size={ep_size} does not divide the {total} "
                                      f"experts of {name}; use a divisor of {total}")
        found += [(f"{name}.{leaf}.weight", experts, getattr(experts, leaf)) for leaf in ("linear_fc1", "linear_fc2")]
    return found


class LocalRows:
    """``source`` (mmx.checkpoint.store.MMSource) with each tensor of ``spans`` ({name: range of rows}) cut to those
    rows, as the rank-local loaders read it (``entries``, ``read``, ``read_rows``; only those rows' bytes are read:
    ``source.read_rows``)."""

    def __init__(self, source, spans):
        self.source, self.spans = source, spans
        self.entries = {name: (dtype, (len(spans[name]),) + tuple(shape[1:]) if name in spans else shape)
                        for name, (dtype, shape) in source.entries.items()}

    def read(self, name):
        return self.read_rows(name, 0, self.entries[name][1][0]) if name in self.spans else self.source.read(name)

    def read_rows(self, name, begin, end):
        start = self.spans[name].start if name in self.spans else 0
        return self.source.read_rows(name, start + begin, start + end)


def local_slots(model, ep_size, ep_rank):
    """Cut every stacked-expert parameter of ``model`` — built under ``nn.empty_init()`` — to an empty slot for the
    experts expert-parallel rank ``ep_rank`` of ``ep_size`` holds (``local_experts``), to be filled from the
    checkpoint (:class:`LocalRows`); returns {parameter name: range of its experts}. :meth:`ExpertParallel.shard`
    then keeps the slices in place."""
    spans = {}
    for name, experts, holder in stacked_experts(model, ep_size):
        whole = holder.weight
        experts.whole_experts = int(whole.shape[0])
        spans[name] = local_experts(experts.whole_experts, ep_size, ep_rank)
        with nn.empty_init():
            holder.weight = nn.Parameter(ops.zeros((len(spans[name]),) + tuple(whole.shape[1:]), whole.dtype),
                                         requires_grad=getattr(whole, "requires_grad", True))
    return spans


def expert_units(names):
    """The dotted names of the StackedExperts modules holding the expert parameters ``names``."""
    return sorted({name.rsplit(".", 2)[0] for name in names})


def load_rank_local(model, source, ep_size, ep_rank):
    """Fill ``model`` — built under ``nn.empty_init()`` (no weight storage) — from the mm checkpoint ``source``
    (MMSource, ``streaming=True``) with only what expert-parallel rank ``ep_rank`` of ``ep_size`` holds: each
    stacked-expert parameter becomes its run of experts (:func:`local_slots`) and is filled with just those rows of
    the checkpoint tensor (read from the files holding them, whatever EP size the checkpoint was split by),
    everything else whole, one tensor at a time; so no process holds, or reads, another rank's experts. Returns
    ``model``. (Under fully_shard, ``distributed.load_fully_sharded`` fills the slots with their shards instead.)"""
    from mmx.models.common.weights import stream_mm_state

    return stream_mm_state(model, LocalRows(source, local_slots(model, ep_size, ep_rank)))


class ExpertParallel:
    """The expert-parallel state of one rank: built by :func:`setup`, called by every ``StackedExperts`` forward
    (``experts.parallel``) as ``self(x, weights, indices, gate_up, down)``."""

    def __init__(self, comm, rank, world_size, ep_size):
        self.comm, self.rank, self.world_size, self.ep_size = comm, rank, world_size, ep_size
        self.ep_rank, self.group_index, self.dp_size = rank % ep_size, rank // ep_size, world_size // ep_size
        self.groups = comm.expert_groups(ep_size)
        self.whole_shapes = {}    # expert parameter name → its whole (E, ...) shape
        self.modules = []         # the StackedExperts modules' dotted names (fully_shard's expert units)
        self.num_experts = None
        self.is_expert = []       # per trainable parameter (bind)

    # -- placement -------------------------------------------------------------------------------------------------

    def shard(self, model):
        """Keep this rank's experts of every stacked-expert tensor of ``model`` (filled whole before, or already
        holding only them: :func:`load_rank_local`) and route the MoE layers through the dispatcher; returns self.
        ExpertParallelError when the model has no experts or E % EP != 0."""
        for name, experts, holder in stacked_experts(model, self.ep_size):
            whole = holder.weight
            total = getattr(experts, "whole_experts", None)   # set by load_rank_local: the slice is in place
            if total is None:
                total = int(whole.shape[0])
                span = local_experts(total, self.ep_size, self.ep_rank)
                value = ops.to_numpy(whole)[span.start:span.stop]
                holder.weight = nn.Parameter(ops.cast(ops.tensor(np.ascontiguousarray(value)), whole.dtype),
                                             requires_grad=getattr(whole, "requires_grad", True))
            self.num_experts = total
            self.whole_shapes[name] = (total,) + tuple(int(d) for d in whole.shape[1:])
            experts.parallel = self
        self.modules = expert_units(self.whole_shapes)
        return self

    def bind(self, named_params):
        """Which of the trainable ``named_params`` are expert slices (for the gradient sums and the norm)."""
        self.is_expert = [name in self.whole_shapes for name, _ in named_params]

    def whole_shape(self, name, shape):
        return self.whole_shapes.get(name, tuple(shape))

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def full(self, name, array):
        """The whole tensor of expert parameter (or moment) ``name`` from this rank's slice ``array`` (numpy): a
        collective over all ranks (every rank calls it in the same order); others return ``array`` unchanged."""
        if name not in self.whole_shapes:
            return array
        gathered = self.comm.all_gather_numpy(np.ascontiguousarray(array))
        return np.concatenate(list(gathered[:self.ep_size]), axis=0)

    def local(self, name, array):
        """This rank's slice of a whole expert tensor (numpy); any other tensor unchanged."""
        if name not in self.whole_shapes:
            return array
        span = local_experts(np.shape(array)[0], self.ep_size, self.ep_rank)
        return np.ascontiguousarray(np.asarray(array)[span.start:span.stop])

    # -- the step ----------------------------------------------------------------------------------------------------

    def sum_gradients(self, grads, sharded=False):
        """Dense gradients summed over all ranks, expert gradients over the ranks holding the same experts; a fully
        sharded (``sharded``) model's backward did both already (reduce-scatters of sums on each unit's mesh)."""
        if sharded:
            return list(grads)
        dense = [k for k, expert in enumerate(self.is_expert) if not expert]
        expert = [k for k, flag in enumerate(self.is_expert) if flag]
        out = list(grads)
        for k, summed in zip(dense, self.comm.all_reduce_sum([grads[k] for k in dense])):
            out[k] = summed
        for k, summed in zip(expert, self.comm.sum_expert_gradients([grads[k] for k in expert], self.groups)):
            out[k] = summed
        return out

    def clip_grad_norm(self, steps, grads, max_norm):
        """``steps.clip_grad_norm`` over the whole model: the dense norm (the same on every rank) and the expert
        slices' squared norms summed over an EP group (the sum over all ranks / the groups); the same clip
        coefficient as one process (max_norm / (norm + 1e-6), applied when norm > max_norm)."""
        dense = [g for g, flag in zip(grads, self.is_expert) if not flag]
        expert = [g for g, flag in zip(grads, self.is_expert) if flag]
        _, dense_norm = steps.clip_grad_norm(dense, None)
        _, expert_norm = steps.clip_grad_norm(expert, None)
        squares = self.comm.all_reduce_numpy(np.array([expert_norm ** 2], np.float64))[0] / self.dp_size
        norm = float(np.float32(np.sqrt(dense_norm ** 2 + squares)))
        if max_norm and norm > max_norm:
            coefficient = float(np.float32(max_norm) / (np.float32(norm) + np.float32(1e-6)))
            grads = [g * coefficient for g in grads]
        return grads, norm

    # -- dispatch ----------------------------------------------------------------------------------------------------

    def __call__(self, x, weights, indices, gate_up, down):
        """x (T, C), weights / indices (T, K) (global expert indices), this rank's gate_up (E/EP, C, 2F) and down
        (E/EP, F, C) → (T, C), as ``ops.moe_experts`` with all E experts."""
        if self.comm.EXPERT_DISPATCH == "all_to_all":
            return self._all_to_all(x, weights, indices, gate_up, down)
        return self._all_gather(x, weights, indices, gate_up, down)

    def _all_to_all(self, x, weights, indices, gate_up, down):
        tokens, top_k = indices.shape
        per = self.num_experts // self.ep_size
        order, counts, send = dispatch_plan(ops.to_numpy(indices), self.num_experts, self.ep_size)
        # per-expert counts first: received[s, e] = rows source s sends to local expert e
        received = self.comm.all_to_all(ops.tensor(counts), [per] * self.ep_size, [per] * self.ep_size, self.groups)
        received = ops.to_numpy(received).reshape(self.ep_size, per)
        recv = received.sum(axis=1)
        rows = ops.index_select(x, 0, ops.tensor(order // top_k))
        arrived = self.comm.all_to_all(rows, [int(n) for n in recv], [int(n) for n in send], self.groups)
        local_ids = np.concatenate([np.repeat(np.arange(per), row) for row in received]).astype(np.int64)
        if local_ids.size:
            out = ops.moe_experts(arrived, ops.ones((local_ids.size, 1), x.dtype),
                                  ops.tensor(local_ids.reshape(-1, 1)), gate_up, down)
        else:   # nothing arrived: the empty rows still go back, so the backward's collectives match every rank's
            out = arrived * 0.0
        back = self.comm.all_to_all(out, [int(n) for n in send], [int(n) for n in recv], self.groups)
        outputs = ops.index_select(back, 0, ops.tensor(np.argsort(order, kind="stable")))   # (T*K, C) in t, k order
        outputs = ops.reshape(outputs, (tokens, top_k, x.shape[-1]))
        return ops.sum(outputs * ops.unsqueeze(weights, -1), dim=1)

    def _all_gather(self, x, weights, indices, gate_up, down):
        tokens, top_k = indices.shape
        sizes = self.comm.all_gather_numpy(np.array([tokens], np.int64))[:, 0]
        slot = int(sizes.max())
        start = self.rank * slot

        def placed(t):   # this rank's rows at its slot of a (world x slot) buffer of zeros
            width = t.shape[-1]
            parts = [ops.zeros((start, width), t.dtype)] if start else []
            parts.append(t)
            after = self.world_size * slot - start - tokens
            if after:
                parts.append(ops.zeros((after, width), t.dtype))
            return ops.cat(parts, 0)

        every_x = self.comm.all_reduce_differentiable(placed(x))
        every_w = self.comm.all_reduce_differentiable(placed(weights))
        chosen = np.zeros((slot, top_k), np.int64)
        chosen[:tokens] = ops.to_numpy(indices)
        chosen = self.comm.all_gather_numpy(chosen).reshape(self.world_size * slot, top_k)
        per = self.num_experts // self.ep_size
        mine = chosen // per == self.ep_rank
        group = np.zeros(self.world_size * slot, bool)
        group[self.group_index * self.ep_size * slot:(self.group_index + 1) * self.ep_size * slot] = True
        mine &= group[:, None]
        local_ids = np.where(mine, chosen - self.ep_rank * per, 0)
        share = ops.moe_experts(every_x, every_w * ops.cast(ops.tensor(mine.astype(np.float32)), weights.dtype),
                                ops.tensor(local_ids), gate_up, down)
        return self.comm.all_reduce_differentiable(share)[start:start + tokens]


def setup(model, training, rank, world_size, comm):
    """The :class:`ExpertParallel` of ``training.expert_model_parallel_size`` > 1 with ``model`` sharded (after its
    whole weights are loaded and broadcast, or its own experts alone: :func:`load_rank_local`), or None for 1.
    ExpertParallelError for a size that does not fit."""
    ep_size = checked_size(training, world_size)
    if ep_size == 1:
        return None
    return ExpertParallel(comm, rank, world_size, ep_size).shard(model)


def checked_size(training, world_size):
    """``training.expert_model_parallel_size`` (1 when unset); ExpertParallelError when it does not divide the
    ``world_size`` launched processes, or asks for ``data_parallel: fully_shard`` on a backend whose fully_shard
    does not compose with it (``distributed.EXPERT_FULLY_SHARD``)."""
    from mmx import backend

    ep_size = int(training.get("expert_model_parallel_size") or 1)
    if ep_size > 1 and training.get("data_parallel") == "fully_shard" and \
            not backend.get().distributed.EXPERT_FULLY_SHARD:
        raise ExpertParallelError(f"training.expert_model_parallel_size={ep_size} with training.data_parallel: "
                                  f"fully_shard is not implemented on {backend.name()} (its fully_shard gives each "
                                  f"parameter's AdamW state to one rank, which sends the new weights to all, and "
                                  f"expert slices differ between ranks); use data_parallel: replicate with expert "
                                  f"parallelism there")
    if ep_size > 1 and world_size % ep_size:
        raise ExpertParallelError(f"training.expert_model_parallel_size={ep_size} must divide the {world_size} "
                                  f"launched processes (world = expert parallel x data parallel); launch a multiple "
                                  f"of {ep_size} processes or change the size")
    return ep_size


class ExpertOptimizer:
    """The backend's AdamW over this rank's parameters (expert slices included), with whole moments in and out:
    ``state_dict`` gathers the expert moments (a collective: every rank calls it; ``gather_only`` ranks get None),
    ``load_state_dict`` keeps this rank's slice of whole moments (of a checkpoint of any EP size or backend)."""

    def __init__(self, optimizer, experts):
        self.optimizer, self.experts = optimizer, experts

    def step(self, grads, lr):
        self.optimizer.step(grads, lr)

    def state_dict(self, gather_only=False):
        state = self.optimizer.state_dict()
        if not state["step"]:
            return None if gather_only else state
        whole = {"step": state["step"]}
        for kind in ("exp_avg", "exp_avg_sq"):
            whole[kind] = {name: self.experts.full(name, value) for name, value in state[kind].items()}
        return None if gather_only else whole

    def stream_state(self, gather_only=False):
        """(step, iterator of (kind, name, whole moment)): :meth:`state_dict` one moment at a time, the expert ones
        gathered as they are drawn (a collective: every rank draws them all; ``gather_only`` ranks get None)."""
        step, moments = self.optimizer.stream_state()

        def whole():
            for kind, name, value in moments:
                value = self.experts.full(name, value)
                yield kind, name, None if gather_only else value
                del value
        return step, whole()

    def load_state_dict(self, state):
        if state["step"]:
            state = dict(state, **{kind: {name: self.experts.local(name, value) for name, value in state[kind].items()}
                                   for kind in ("exp_avg", "exp_avg_sq")})
        self.optimizer.load_state_dict(state)
