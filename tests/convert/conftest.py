"""Tiny HF checkpoints (mmx.tiny) shared by the conversion tests; plain helpers live in convert_helpers.py."""
import os

import ml_dtypes
import pytest

from convert_helpers import legacy_name
from mmx.checkpoint.safetensors_io import load_file, save_file
from mmx.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """tiny_hf(family, tied=False, dtype="float32", legacy=False) → path of a cached tiny HF checkpoint.

    ``dtype="bfloat16"`` re-saves the weights as bf16; ``legacy=True`` renames them to the old hub names
    (visual.*, model.layers.*, model.embed_tokens, model.norm).
    """
    cache = {}

    def build(family, tied=False, dtype="float32", legacy=False):
        key = (family, tied, dtype, legacy)
        if key not in cache:
            path = str(tmp_path_factory.mktemp(f"hf_{family}_{int(tied)}_{dtype}_{int(legacy)}"))
            make_tiny_checkpoint(path, family=family, tied=tied)
            if dtype != "float32" or legacy:
                weights_path = os.path.join(path, "model.safetensors")
                weights = load_file(weights_path)
                if dtype == "bfloat16":
                    # GLM-4.5V's router correction bias stays float32, as in the hub files
                    weights = {name: array if name.endswith("e_score_correction_bias") else
                               array.astype(ml_dtypes.bfloat16) for name, array in weights.items()}
                if legacy:
                    weights = {legacy_name(name): array for name, array in weights.items()}
                save_file(weights, weights_path, {"format": "pt"})
            cache[key] = path
        return cache[key]

    return build

