"""The eval split: ``data.val_size`` holds samples out of training, ``training.eval_interval`` evaluates them.

:func:`split_eval` takes ``val_size`` samples (a fraction < 1 of the dataset, or a count >= 1) out of a map-style
dataset, chosen by ``RandomState(seed).permutation``, so the same config always holds out the same samples. The
eval loss (:func:`eval_loss`) is the training loss's definition on the whole eval split as one global batch: the same
``loss_type`` weights (mmx.train.loss) over ``micro_batch_size`` micro-batches, summed, with no gradient and no
update; on N data-parallel processes each takes micro-batches ``rank, rank + N, ...`` and the sums are all-reduced.
So a model's eval loss on some samples equals the training loss a step on exactly those samples reports.
"""
import numpy as np

from mmx import lora
from mmx.train.config import ConfigError
from mmx.train.loss import loss_counts, token_weights, weighted_lm_loss


class Subset:
    """``indices`` of ``dataset`` (len + getitem); ``stats`` are the whole dataset's (what was read and dropped)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.stats = getattr(dataset, "stats", None)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]


def eval_count(val_size, total):
    """Samples held out for ``val_size`` (0: none) of ``total``; a ConfigError when none or all would be."""
    if not val_size:
        return 0
    if isinstance(val_size, bool) or val_size < 0:
        raise ConfigError(f"data.val_size {val_size!r}: use a fraction below 1 (0.1 = 10% of the samples) or a "
                          f"number of samples")
    count = int(round(val_size * total)) if val_size < 1 else int(val_size)
    if count < 1 or count >= total:
        raise ConfigError(f"data.val_size {val_size} holds out {count} of the {total} samples; the eval split and "
                          f"the training split each need at least one: choose a val_size between {1 / total:.3g} "
                          f"and {total - 1}")
    return count


def split_eval(dataset, val_size, seed):
    """(training subset, eval subset) of ``dataset``, or (dataset, None) when ``val_size`` is 0."""
    count = eval_count(val_size, len(dataset))
    if not count:
        return dataset, None
    order = np.random.RandomState(seed).permutation(len(dataset))
    return Subset(dataset, sorted(order[count:])), Subset(dataset, sorted(order[:count]))


def eval_ranges(count, micro, rank, ranks):
    """This rank's micro-batches of an eval split of ``count`` samples: (start, end) sample ranges ``rank, rank +
    ranks, ...`` of the ``micro``-sample chunks, padded with None so every rank runs the same number of forwards (a
    fully sharded model gathers its weights in collectives every rank must join)."""
    chunks = [(start, min(start + micro, count)) for start in range(0, count, micro)]
    mine = chunks[rank::ranks]
    return mine + [None] * (-(-len(chunks) // ranks) - len(mine))


def eval_loss(trainer, dataset):
    """The loss of ``trainer``'s model on ``dataset`` (module doc): (loss, samples)."""
    from mmx.train.loop import prepare_micro_batch

    training, comm = trainer.training, trainer.comm
    ranges = eval_ranges(len(dataset), training["micro_batch_size"], trainer.rank, trainer.world_size)
    batches = [trainer.collate([dataset[i] for i in range(*span)]) for span in ranges if span is not None]
    counts = loss_counts(batches)
    if trainer.world_size > 1:
        counts = comm.all_reduce_numpy(counts)
    weights = token_weights(batches, training["loss_type"], global_counts=counts[:3])
    prepared = [prepare_micro_batch(trainer.model, batch, weight) for batch, weight in zip(batches, weights)]
    if len(prepared) < len(ranges):   # this rank's share is short: a zero-weighted pass keeps the ranks in step
        padding = trainer.collate([dataset[0]])
        prepared += [prepare_micro_batch(trainer.model, padding, np.zeros_like(padding["labels"], np.float32))
                     for _ in range(len(ranges) - len(prepared))]

    def loss_fn(micro_batch):   # the language-model loss only (an MoE's load-balancing term is not evaluated)
        inputs, targets, weights = micro_batch
        return weighted_lm_loss(trainer.model(**inputs), targets, weights)

    with lora.dropout_disabled(trainer.model):   # LoRA dropout is for training steps only
        loss = trainer.steps.evaluate_loss(loss_fn, prepared, training["precision"], trainer.params)
    if trainer.world_size > 1:
        loss = float(comm.all_reduce_numpy(np.array([loss], np.float64))[0])
    return loss, len(dataset)
