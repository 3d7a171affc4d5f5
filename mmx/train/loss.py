"""Loss modes (the guides' ``vlm_model_loss_calculate_type``) as per-token weights computed on the host.

A global batch is split into micro-batches (gradient accumulation). Each micro-batch's loss is
``sum(cross_entropy(token) * weight(token))`` and the optimizer sees the sum over micro-batches, so a mode is just a
choice of weights (B, S) for the next-token targets of the models' ``shift_labels`` (-100 = not supervised; the
last position of each row, and of each packed sample, predicts nothing):

- ``default``: each micro-batch's mean over its supervised tokens, averaged over the micro-batches (Megatron's).
  Depends on the micro-batch size (not on how micro-batches are spread over data-parallel ranks).
- ``per_token``: 1 / (supervised tokens in the global batch): every token counts the same; independent of the split.
- ``per_sample``: 1 / (tokens of the token's sample × samples in the global batch): every sample counts the same,
  whatever its length; independent of the split. Packed rows (``cu_seqlens``) count each packed sample separately.

Data parallel: each rank holds some of the micro-batches; the counts behind the weights (supervised tokens,
supervised samples, micro-batches) are summed over ranks first (:func:`loss_counts`, ``global_counts``), so every
rank's weights are the ones a single process would give its micro-batches.
"""
import numpy as np

from mmx import ops
from mmx.models.common.loss import shift_labels

LOSS_MODES = ("default", "per_token", "per_sample")
IGNORE_INDEX = -100


def shifted_targets(batch):
    """Next-token targets (B, S) int64 of a batch (its ``labels``, and ``cu_seqlens`` when packed)."""
    return shift_labels(batch["labels"], batch.get("cu_seqlens"))


def _sample_segments(batch):
    """[(row, start, end)] of each sample of a micro-batch: whole rows, or the samples of a packed row."""
    rows, length = np.shape(batch["labels"])
    if batch.get("cu_seqlens") is None:
        return [(row, 0, length) for row in range(rows)]
    bounds = np.asarray(batch["cu_seqlens"]).tolist()
    return [(0, start, end) for start, end in zip(bounds[:-1], bounds[1:])]


def loss_counts(micro_batches):
    """The denominators of the loss modes over ``micro_batches``: int64 [supervised tokens, supervised samples,
    micro-batches]. Data parallel: each rank counts its own micro-batches and the sum over ranks is the global
    batch's (``token_weights``' ``global_counts``)."""
    valid = [(shifted_targets(batch) != IGNORE_INDEX) for batch in micro_batches]
    samples = sum(1 for batch, mask in zip(micro_batches, valid)
                  for row, start, end in _sample_segments(batch) if mask[row, start:end].any())
    return np.array([sum(int(mask.sum()) for mask in valid), samples, len(micro_batches)], np.int64)


def token_weights(micro_batches, mode, global_counts=None):
    """Per-target weights (B, S) float32 for each of ``micro_batches``, for loss ``mode``.

    ``global_counts`` (:func:`loss_counts` summed over the global batch's micro-batches) defaults to the counts of
    ``micro_batches``, i.e. they are the whole global batch; a data-parallel rank passes the all-reduced counts and
    its own share of the micro-batches.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"training.loss_type {mode!r} is unknown; use one of {LOSS_MODES} "
                         f"(the guides' vlm_model_loss_calculate_type)")
    tokens, samples, micro_count = (loss_counts(micro_batches) if global_counts is None else global_counts).tolist()
    valid = [(shifted_targets(batch) != IGNORE_INDEX) for batch in micro_batches]
    weights = [np.zeros(v.shape, np.float32) for v in valid]
    if mode == "default":
        for weight, mask in zip(weights, valid):
            count = mask.sum()
            if count:
                weight[mask] = 1.0 / (count * micro_count)
    elif mode == "per_token":
        for weight, mask in zip(weights, valid):
            weight[mask] = 1.0 / max(tokens, 1)
    else:
        for weight, mask, batch in zip(weights, valid, micro_batches):
            for row, start, end in _sample_segments(batch):
                count = int(mask[row, start:end].sum())
                if count:
                    weight[row, start:end] = mask[row, start:end] / (count * samples)
    return weights


def weighted_lm_loss(logits, targets, weights):
    """``sum(cross_entropy(logits, targets) * weights)``: logits (B, S, V) with targets/weights (B, S), or logits
    (N, V) of selected positions with targets/weights (N,) → scalar."""
    vocab = logits.shape[-1]
    losses = ops.cross_entropy(ops.reshape(logits, (-1, vocab)), ops.reshape(targets, (-1,)), IGNORE_INDEX, "none")
    return ops.sum(losses * ops.reshape(weights, (-1,)))
