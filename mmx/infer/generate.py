"""The decode loop: prefill the prompt, then one token per step, with or without a KV cache.

Mirrors transformers' greedy/sample loop (``GenerationMixin._sample``) for Qwen-VL models::

    generate(model, inputs, settings)
    ├── prefill     model(input_ids (B, S), attention_mask, pixels, grids, cache)  → logits[:, -1]  (B, V)
    │               the cache stores keys/values and each row's next 3-D position (after its images/videos)
    ├── choose      TokenChooser: repetition penalty → greedy argmax | temperature/top-k/top-p + seeded draw
    ├── stop        a row is done at an EOS id or when its text ends with a stop string; done rows get pad ids
    └── decode      model(next ids (B, 1), attention_mask (B, S + t), cache)  — or, without a cache, the whole
                    sequence again with the pixels (the reference the cache is tested against)

Batches are left padded (the processor's ``padding_side="left"``): the attention mask hides the padding, the model's
3-D positions skip it, so each row decodes exactly as it would alone.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from mmx import nn, ops
from mmx.infer.sampling import TokenChooser

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class Generation:
    """What :func:`generate` returns: per row the new token ids (ending with the EOS id or the tokens that
    completed a stop string, when that is why the row stopped) and the reason (``eos``, ``stop_string``,
    ``length``); wall-clock seconds of the prefill and of each decode step."""

    token_ids: list
    finish_reasons: list
    prefill_seconds: float = 0.0
    step_seconds: list = field(default_factory=list)


class _StopStrings:
    """Stop when a row's generated text ends with a stop string that its last token helped complete
    (transformers' StopStringCriteria: a stop string already complete before the last token does not count)."""

    def __init__(self, tokenizer, stop_strings):
        if stop_strings and tokenizer is None:
            raise ValueError("stop strings need the tokenizer to decode the generated text; pass tokenizer=")
        self.tokenizer, self.stop_strings = tokenizer, tuple(stop_strings)

    def hit(self, tokens):
        """True when ``tokens`` (a row's generated ids) contain a stop string that its last token completed."""
        if not self.stop_strings:
            return False
        # Decoding only a tail bounds the cost per step; a stop string spans at most len(stop) tokens.
        tail = tokens[-(max(len(stop) for stop in self.stop_strings) + 1):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        before = self.tokenizer.decode(tail[:-1], skip_special_tokens=False)
        return any(stop in text and stop not in before for stop in self.stop_strings)


def _prompt_tokens(input_ids, attention_mask):
    """Per row the real (unpadded) prompt tokens, for the repetition penalty."""
    return [row[mask.astype(bool)] for row, mask in zip(input_ids, attention_mask)]


def generate(model, inputs, settings, tokenizer=None):
    """Generate up to ``settings.max_new_tokens`` tokens for each row of ``inputs``.

    model: a Qwen-VL model (``forward(input_ids, attention_mask, pixel_values, ..., cache, logits_to_keep)`` →
    float32 logits (B, 1, V) of the last position); inputs: the processor's output as numpy (``input_ids`` (B, S)
    and ``attention_mask`` (B, S), left padded, and the vision keys); settings:
    :class:`mmx.infer.settings.GenerationSettings`; tokenizer: needed for stop strings.
    """
    from mmx.models.common.cache import KVCache

    input_ids = np.asarray(inputs["input_ids"], np.int64)
    batch = input_ids.shape[0]
    attention_mask = np.asarray(inputs.get("attention_mask", np.ones_like(input_ids)), np.int64)
    vision = {key: np.asarray(inputs[key]) for key in VISION_KEYS if inputs.get(key) is not None}
    chooser = TokenChooser(settings.sampling, batch)
    stops = _StopStrings(tokenizer, settings.stop_strings)
    eos = np.array(settings.eos_token_ids, np.int64)
    seen = _prompt_tokens(input_ids, attention_mask)
    new_tokens = [[] for _ in range(batch)]
    reasons = [None] * batch
    cache = KVCache() if settings.use_cache else None
    sequence, step_ids, step_vision = input_ids, input_ids, vision
    result = Generation(new_tokens, reasons)
    with nn.inference_mode():
        for step in range(settings.max_new_tokens):
            started = time.perf_counter()
            if cache is None:
                logits = model(sequence, attention_mask=attention_mask, logits_to_keep=1, **vision)
            else:
                logits = model(step_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1,
                               **step_vision)
            next_ids = chooser(ops.to_numpy(logits[:, -1]), seen)
            done = np.array([reason is not None for reason in reasons])
            next_ids = np.where(done, settings.pad_token_id, next_ids)
            for row in np.flatnonzero(~done):
                token = int(next_ids[row])
                new_tokens[row].append(token)
                seen[row] = np.append(seen[row], token)
                if token in eos:
                    reasons[row] = "eos"
                elif stops.hit(new_tokens[row]):
                    reasons[row] = "stop_string"
            elapsed = time.perf_counter() - started
            if step == 0:
                result.prefill_seconds = elapsed
            else:
                result.step_seconds.append(elapsed)
            if all(reason is not None for reason in reasons):
                break
            step_ids = next_ids[:, None]
            step_vision = {}
            sequence = np.concatenate([sequence, step_ids], axis=1)
            attention_mask = np.concatenate([attention_mask, np.ones((batch, 1), np.int64)], axis=1)
    result.finish_reasons = [reason or "length" for reason in reasons]
    return result
