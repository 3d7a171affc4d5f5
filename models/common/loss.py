"""The training loss of the Qwen-VL models: next-token cross entropy (HF ``ForCausalLMLoss``)."""
import numpy as np

from mmx import ops

IGNORE_INDEX = -100


def shift_labels(labels, cu_seqlens=None):
    """Labels (B, S) numpy → the target of each position: labels[:, i + 1], IGNORE_INDEX at the end of each row.

    With ``cu_seqlens`` (a packed row, B = 1) the last token of every sample is ignored too, so no sample
    predicts the first token of the next one.
    """
    labels = np.asarray(labels, np.int64)
    shifted = np.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    if cu_seqlens is not None:
        ends = np.asarray(cu_seqlens)[1:] - 1
        shifted[:, ends[ends >= 0]] = IGNORE_INDEX
    return shifted


def causal_lm_loss(logits, labels, cu_seqlens=None):
    """Mean cross entropy of logits (B, S, V) against the next token of ``labels`` (B, S) (numpy or tensor,
    IGNORE_INDEX = -100 ignored), over the non-ignored targets; 0 when there are none. → scalar float32."""
    if not isinstance(labels, np.ndarray):
        labels = ops.to_numpy(labels)
    targets = shift_labels(labels, cu_seqlens)
    vocab = logits.shape[-1]
    return ops.cross_entropy(ops.reshape(logits, (-1, vocab)), ops.tensor(targets.reshape(-1)), IGNORE_INDEX)
