"""Choosing the next token from last-position logits: greedy or seeded sampling, on the host with numpy.

Logits of the last position (B, V) float32 are copied to the host once per step (what transformers' ``generate``
does with ``.to(float32)`` on device; here the vocabulary row is small next to the forward pass). Host-side choice
makes sampling identical on every backend: a seed gives the same draws on torch and on MindSpore.

The processors mirror transformers' order and numerics (``generation/logits_process.py``):
repetition penalty → (sampling only) temperature → top-k → top-p → softmax → draw. Greedy is ``argmax`` after the
repetition penalty, first index on ties (torch.argmax and numpy.argmax agree).
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingConfig:
    """How the next token is chosen. ``do_sample=False`` is greedy; ``seed`` makes sampling reproducible."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0               # 0 keeps every token
    top_p: float = 1.0           # 1.0 keeps every token
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}; "
                             f"use greedy decoding (no --temperature, or do_sample=false) for temperature 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(scores, seen, penalty):
    """Divide positive (multiply negative) scores of tokens already seen by ``penalty``.

    scores (B, V) float32; seen: one 1-D int array per row (the row's real prompt and generated tokens — padding is
    not counted, so a batched row matches its single run).
    """
    if penalty == 1.0:
        return scores
    scores = scores.copy()
    for row, tokens in enumerate(seen):
        tokens = np.unique(tokens)
        picked = scores[row, tokens]
        scores[row, tokens] = np.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def _top_k(scores, top_k):
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
    return np.where(scores < kth, -np.inf, scores)


def _top_p(scores, top_p):
    if top_p >= 1.0:
        return scores
    # transformers' TopPLogitsWarper: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p,
    # always keep the most likely one.
    order = np.argsort(scores, axis=-1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(_softmax(sorted_scores), axis=-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[:, -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores)


def _softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


class TokenChooser:
    """Picks next tokens step after step. Row ``i`` draws from its own generator seeded with ``(seed, i)``."""

    def __init__(self, config, batch_size):
        self.config = config
        self.rngs = [np.random.default_rng([config.seed, row]) for row in range(batch_size)]

    def __call__(self, logits, seen):
        """logits (B, V) float32 numpy; seen: per-row 1-D token arrays → next token ids (B,) int64."""
        config = self.config
        scores = apply_repetition_penalty(np.asarray(logits, dtype=np.float32), seen, config.repetition_penalty)
        if not config.do_sample:
            return scores.argmax(axis=-1).astype(np.int64)
        scores = _top_p(_top_k(scores / np.float32(config.temperature), config.top_k), config.top_p)
        probs = _softmax(scores.astype(np.float64))
        return np.array([rng.choice(probs.shape[-1], p=row_probs) for rng, row_probs in zip(self.rngs, probs)],
                        dtype=np.int64)
