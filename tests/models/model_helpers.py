"""Shared pieces of the model tests (a module name unique across tests/ so imports never collide)."""
import os
import subprocess
import sys

import numpy as np

from mmx.checkpoint.store import load_mm
from mmx.convert.drivers import hf_to_mm
from mmx.tiny import make_tiny_checkpoint

VARIANTS = [("qwen2_vl", False), ("qwen2_vl", True), ("qwen2_5_vl", False), ("qwen2_5_vl", True),
            ("qwen3_vl", False), ("qwen3_vl", True), ("qwen3_vl_moe", False), ("qwen3_vl_moe", True),
            ("glm4v", False), ("glm4v", True), ("glm4v_moe", False), ("glm4v_moe", True)]


class Checkpoint:
    """A tiny HF checkpoint, its mm conversion (the convert helper's hf_to_mm) and the mm tensors."""

    def __init__(self, root, family, tied, layout=None, **overrides):
        """``layout``: hf_to_mm's tp_size / vit_pp_layers / llm_pp_layers (default one piece)."""
        self.family, self.tied = family, tied
        self.hf_dir = make_tiny_checkpoint(str(root / "hf"), family, tied=tied, **overrides)
        self.mm_dir = str(root / "mm")
        hf_to_mm(self.hf_dir, self.mm_dir, **(layout or {}))
        self.tensors = load_mm(self.mm_dir)[1]

    def build(self):
        from mmx import models

        return models.load_mm_state(models.build(self.hf_dir), self.tensors)


def model_inputs(inputs):
    """The model's keyword arguments from reference.build_inputs' dict (labels left out)."""
    return {key: value for key, value in inputs.items() if key != "labels"}


def relative_errors(got, want):
    """{name: max|got - want| / max|want|} over the names of ``want``."""
    return {name: float(np.abs(got[name] - want[name]).max() / max(np.abs(want[name]).max(), 1e-12))
            for name in want}


def run_backend(backend, script, *args):
    """Run ``python script args`` with MMX_BACKEND=backend in a subprocess; fail with its output otherwise."""
    env = dict(os.environ, MMX_BACKEND=backend)
    done = subprocess.run([sys.executable, script, *map(str, args)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{script} on {backend} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
