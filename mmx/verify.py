"""``mmx verify``: an mm checkpoint run by mmx on the current backend against transformers on the HF checkpoint.

For each reference input (mmx.reference: two image sizes, a video, a text-only prompt, and all four batched with
padding) it reports the max abs difference of the float32 logits over the real (unpadded) tokens.
"""
import numpy as np

from mmx import reference

BATCH = "batch"


def verify(hf_dir, mm_dir, iteration=None):
    """[(input name, max abs logits diff)] for each single input and the padded batch of all of them."""
    from mmx import models, nn, ops
    from mmx.checkpoint.store import load_mm

    _, tensors = load_mm(mm_dir, iteration=iteration)
    model = models.load_mm_state(models.build(hf_dir), tensors)
    results = []
    for name in list(reference.SAMPLES) + [BATCH]:
        names = tuple(reference.SAMPLES) if name == BATCH else (name,)
        inputs = reference.build_inputs(hf_dir, names, padding_side="left" if name == BATCH else "right")
        expected = reference.hf_logits(hf_dir, inputs)
        with nn.inference_mode():
            logits = ops.to_numpy(model(**inputs))
        real = inputs["attention_mask"].astype(bool)
        results.append((name, float(np.abs(logits - expected)[real].max())))
    return results
