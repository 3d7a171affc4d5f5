"""mmx.train — fine-tuning, framework-free (ARCHITECTURE rule 10).

- ``config``: the finetune config file (model / data / training sections) and dotted overrides.
- ``loop``: ``Trainer`` — sampling, micro-batches, loss weights, checkpoints, resume, logging; the backend supplies
  the step (``mmx.backends.<name>.train``: AdamW, gradient accumulation, clipping).
- ``loss``: the loss modes (default / per_token / per_sample) as host-side token weights.
- ``schedule``: warmup + cosine / linear / constant learning rates.
- ``checkpoint``: atomic training checkpoints in the mm layout (+ optimizer, RNG, trainer state).
- ``freeze``: the guides' freeze flags → parameters that do not train.
- ``metrics``: logs, JSONL, TensorBoard, MFU, loss curve.
- ``finetune``: builds model + data from a config and runs the Trainer (``mmx finetune``); ``demo``: ``mmx demo``.
"""
