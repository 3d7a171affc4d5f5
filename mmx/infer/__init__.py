"""Inference with mmx models: ``mmx infer`` and the Python API behind it (issue 7).

    pipeline = mmx.infer.load("ckpt_dir")                 # mm (any TP/PP layout) or HF checkpoint
    replies = pipeline.generate([[user_message("Describe.", images=["cat.png"])]], max_new_tokens=32)
    replies[0].text, replies[0].token_ids, replies[0].finish_reason

Modules: ``loading`` (model + processor from a directory), ``prompts`` (chat template + processor → inputs),
``settings`` (generation config + overrides), ``sampling`` (greedy / seeded sampling on the host), ``generate``
(the prefill + decode loop with a KV cache), ``batch`` (``--config inference.json`` → JSONL), ``chat``
(interactive multi-turn). Everything here is framework-free: models run through mmx.ops.
"""
from dataclasses import dataclass

from mmx.infer.prompts import user_message

__all__ = ["Pipeline", "Reply", "load", "user_message"]


@dataclass
class Reply:
    """One row's result: decoded text (special tokens dropped), new token ids, why it stopped."""

    text: str
    token_ids: list
    finish_reason: str


class Pipeline:
    """A loaded model with its processor and its checkpoint's generation settings."""

    def __init__(self, model_dir, model, processor):
        from mmx.infer import settings

        self.model_dir, self.model, self.processor = str(model_dir), model, processor
        self.settings = settings.from_checkpoint(self.model_dir, processor.tokenizer)

    def generate(self, conversations, **overrides):
        """Replies to a batch of conversations (lists of chat messages; see mmx.infer.prompts), left padded
        together. ``overrides``: ``max_new_tokens``, ``use_cache``, ``stop_strings``, ``do_sample``, ``temperature``,
        ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``."""
        from mmx.infer import generate, prompts, settings

        inputs = prompts.encode(self.processor, conversations)
        result = generate.generate(self.model, inputs, settings.override(self.settings, **overrides),
                                   self.processor.tokenizer)
        self.last_result = result      # timings of the latest call (the CLI reports them on stderr)
        return [Reply(self.decode(tokens), tokens, reason)
                for tokens, reason in zip(result.token_ids, result.finish_reasons)]

    def decode(self, token_ids):
        return self.processor.tokenizer.decode(token_ids, skip_special_tokens=True)


def load(model_dir, iteration=None, adapter=None):
    """A :class:`Pipeline` for the mm or HF checkpoint in ``model_dir`` on the current backend (an mm checkpoint's
    ``iteration``: default the latest), with the LoRA ``adapter`` (a PEFT adapter or an mmx LoRA save) on it."""
    from mmx.infer import loading

    loading.checkpoint_kind(model_dir, iteration)   # a clear error for a directory that is no checkpoint at all
    processor = loading.load_processor(model_dir)
    model = loading.load_model(model_dir, iteration)
    if adapter is not None:
        from mmx.lora import attach_adapter
        attach_adapter(model, model_dir, adapter)
    return Pipeline(model_dir, model, processor)
