"""Learning-rate schedules (Megatron's names): linear warmup, then ``cosine`` / ``linear`` decay or ``constant``.

Framework-free: the loop asks for the rate of each step and hands it to the backend's optimizer, so the schedule's
only state is the step count, which checkpoints store.
"""
import math

DECAY_STYLES = ("cosine", "linear", "constant")


class LRSchedule:
    """``lr(step)`` for the 0-based optimizer step ``step``.

    Warmup ramps linearly to ``lr`` over ``warmup_iters`` steps (step 0 already gets ``lr / warmup_iters``, so no
    step is wasted at rate 0); then the rate decays from ``lr`` to ``min_lr`` by ``decay_iters`` (default: the
    run's ``train_iters``) and stays at ``min_lr`` after.
    """

    def __init__(self, lr, train_iters, min_lr=0.0, warmup_iters=0, decay_style="cosine", decay_iters=None):
        if decay_style not in DECAY_STYLES:
            raise ValueError(f"training.lr_decay_style {decay_style!r} is unknown; use one of {DECAY_STYLES}")
        if min_lr > lr:
            raise ValueError(f"training.min_lr ({min_lr}) is larger than training.lr ({lr})")
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.decay_iters = int(decay_iters or train_iters)
        self.decay_style = decay_style

    def __call__(self, step):
        if step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters
        if self.decay_style == "constant":
            return self.lr
        span = max(self.decay_iters - self.warmup_iters, 1)
        progress = min(max(step - self.warmup_iters, 0) / span, 1.0)
        if self.decay_style == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.lr - self.min_lr) * factor

    def state_dict(self):
        """Everything that defines the schedule, saved so a resumed run can check it continues the same curve."""
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_iters": self.warmup_iters,
                "decay_iters": self.decay_iters, "decay_style": self.decay_style}
