"""``python lora_runner.py WORK OUT.npz FAMILY [key=value ...]``: test_lora's 20 LoRA steps (the LoRA settings per
family, ``LORA``) on MMX_BACKEND with those training overrides, ``losses`` saved to OUT.npz (the MindSpore-vs-torch
and cross-backend resume tests run the other side this way)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from parity_runner import prepare  # noqa: E402

LORA = {"qwen2_5_vl": {"rank": 4, "alpha": 8, "target_modules": "all-linear", "modules_to_save": ["lm_head"]},
        "glm4v": {"rank": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj", "o_proj"]}}


def _trainer(work, family, **overrides):
    from mmx.train.finetune import build_data, build_model
    from mmx.train.loop import Trainer

    overrides.setdefault("lora", LORA[family])
    _, config = prepare(work, family, **overrides)
    model, metadata, _ = build_model(config["model"])
    pipeline = build_data(config)
    return Trainer(model, pipeline.dataset, pipeline.collate, config["training"], metadata)


def mmx_lora_run(work, family, **overrides):
    """(losses, trainer) of 20 LoRA steps on MMX_BACKEND."""
    trainer = _trainer(work, family, **overrides)
    return [record["loss"] for record in trainer.run()], trainer


if __name__ == "__main__":
    import yaml

    options = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in sys.argv[4:])}
    np.savez(sys.argv[2], losses=np.array(mmx_lora_run(sys.argv[1], sys.argv[3], **options)[0]))
