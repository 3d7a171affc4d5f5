"""Training parity on a tiny Qwen2.5-VL / Qwen3-VL: mmx's Trainer on digit samples, the per-step losses.

``python parity_runner.py WORK OUT.npz FAMILY [key=value ...]`` runs it on MMX_BACKEND with those training
overrides and saves ``losses`` (the MindSpore-vs-torch and cross-backend resume tests run the other side this way). The batches are the data pipeline's, drawn in the Trainer's order, so a plain
transformers loop over ``batches(...)`` sees exactly what mmx saw.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mmx.train.config import load_config  # noqa: E402
from mmx.train.finetune import build_data, build_model  # noqa: E402
from mmx.train.loop import Sampler, Trainer  # noqa: E402

STEPS = 20
# Digit image side per family: InternVL3's tiny tiles are 56 px, so 112 px digits are 4 tiles + a thumbnail each.
DIGIT_SIZE = {"internvl": 112}
TRAINING = {"seed": 3, "train_iters": STEPS, "micro_batch_size": 2, "global_batch_size": 2, "lr": 1e-3,
            "lr_decay_style": "constant", "weight_decay": 0.01, "clip_grad": 1.0, "loss_type": "per_token",
            "progress_bar": False, "log_interval": 1000, "peak_tflops": 1.0}


def prepare(work, family="qwen2_5_vl", **overrides):
    """(tiny HF dir of ``family``, finetune config) under ``work`` (built once, byte-identical on every call)."""
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = os.path.join(work, "hf")
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        make_tiny_checkpoint(hf_dir, family=family)
    digits = make_digits_vqa(os.path.join(work, "digits"), size=DIGIT_SIZE.get(family, 56), max_samples=12)
    config = load_config(base={"model": {"init_from_hf_path": hf_dir},
                               "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
                               "training": dict(TRAINING, log_dir=os.path.join(work, "logs"), **overrides)})
    return hf_dir, config


def mmx_losses(work, family="qwen2_5_vl", **overrides):
    hf_dir, config = prepare(work, family, **overrides)
    model, metadata, _ = build_model(config["model"])
    pipeline = build_data(config)
    trainer = Trainer(model, pipeline.dataset, pipeline.collate, config["training"], metadata)
    return [record["loss"] for record in trainer.run()]


def batches(work, family="qwen2_5_vl"):
    """The numpy batches of each step, in the order the Trainer draws them."""
    _, config = prepare(work, family)
    pipeline, training = build_data(config), config["training"]
    sampler = Sampler(len(pipeline.dataset), training["seed"])
    size = training["global_batch_size"]
    return [pipeline.collate([pipeline.dataset[i] for i in sampler.indices(step * size, size)])
            for step in range(training["train_iters"])]


if __name__ == "__main__":
    import yaml

    options = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in sys.argv[4:])}
    np.savez(sys.argv[2], losses=np.array(mmx_losses(sys.argv[1], sys.argv[3], **options)))
