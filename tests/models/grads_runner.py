"""mmx loss and parameter gradients of a checkpoint on this process's backend (MMX_BACKEND).

As a script: ``python grads_runner.py HF_DIR MM_DIR OUT.npz SAMPLE,SAMPLE`` (mmx.reference sample names) saves ``loss`` and ``grad/<mm name>`` arrays, so a test
running on one backend can compare with another backend's numbers.
"""
import sys

import numpy as np


def mmx_loss_and_grads(hf_dir, tensors, inputs):
    """(loss, {mm name: gradient numpy}) of causal_lm_loss on ``inputs`` (reference.build_inputs with labels)."""
    import importlib

    from mmx import backend, models, ops
    from mmx.models.common.loss import causal_lm_loss

    train = importlib.import_module(f"{backend.get().__name__}.train")
    model = models.load_mm_state(models.build(hf_dir), tensors)
    named = train.trainable_parameters(model)

    def loss_fn(batch):
        return causal_lm_loss(model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])

    loss, grads = train.accumulate_grads([param for _, param in named], loss_fn, [inputs])
    return loss, {name: ops.to_numpy(grad) for (name, _), grad in zip(named, grads)}


def main(hf_dir, mm_dir, out, names):
    from mmx import reference
    from mmx.checkpoint.store import load_mm

    inputs = reference.build_inputs(hf_dir, tuple(names.split(",")), with_labels=True)
    loss, grads = mmx_loss_and_grads(hf_dir, load_mm(mm_dir)[1], inputs)
    np.savez(out, loss=np.float64(loss), **{f"grad/{name}": grad for name, grad in grads.items()})


if __name__ == "__main__":
    main(*sys.argv[1:5])
