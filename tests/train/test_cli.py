"""`mmx finetune` end to end on the tiny Qwen2.5-VL (mm checkpoint from hf_to_mm, digit images): logs, loss curve,
a training checkpoint that mmx.checkpoint.load_mm reads, freeze flags from overrides, errors that name the key."""
import json
import os

import numpy as np
from click.testing import CliRunner

from mmx import backend
from mmx.checkpoint import load_mm
from mmx.cli import main


def _setup(tmp_path):
    from mmx.convert.drivers import hf_to_mm
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), family="qwen2_5_vl")
    hf_to_mm(hf_dir, str(tmp_path / "mm"))
    digits = make_digits_vqa(str(tmp_path / "digits"), size=56, max_samples=8)
    config = {"model": {"init_from_hf_path": str(tmp_path / "mm")},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
              "training": {"train_iters": 2, "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3,
                           "save": str(tmp_path / "save"), "log_interval": 1, "progress_bar": False}}
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps(config))
    return str(path)


def _mixed_setup(tmp_path, world_size=2):
    """:func:`_setup`'s config, its 8 digits re-written so that, trained with micro-batches of 1, global batches of 4
    and 2 steps (one epoch) by ``world_size`` processes, every micro-batch of ranks 1.. is text-only (the digit
    asked about without its image) and rank 0's all have images: the mixed batches that must not hang a
    multi-process run."""
    from mmx.train.config import TRAINING_DEFAULTS
    from mmx.train.loop import Sampler

    path = _setup(tmp_path)
    config = json.loads(open(path).read())
    records = json.loads(open(config["data"]["dataset"]).read())
    order = Sampler(len(records), TRAINING_DEFAULTS["seed"]).indices(0, len(records))
    for position, index in enumerate(order):
        if position % world_size:   # micro-batch `position` (size 1) goes to rank position % world_size
            record = records[index]
            record.pop("image")
            record["conversations"][0]["value"] = record["conversations"][0]["value"].replace("<image>", "")
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(records))
    config["data"]["dataset"] = str(mixed)
    config["training"].update(micro_batch_size=1, global_batch_size=4, train_iters=2, loss_type="per_token")
    path = tmp_path / "mixed_finetune.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_finetune_cli_end_to_end(tmp_path):
    config = _setup(tmp_path)
    result = CliRunner().invoke(main, ["finetune", "--backend", backend.name(), "--config", config,
                                       "model.image_encoder.vision_encoder.freeze=true", "training.lr=2e-3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.strip().splitlines()[-1].startswith("final_loss=")
    save = tmp_path / "save"
    records = [json.loads(line) for line in open(save / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2] and records[0]["lr"] == 2e-3
    assert all(np.isfinite(r[key]) for r in records for key in ("loss", "grad_norm", "tokens_per_s", "mfu"))
    assert (save / "logs" / "loss_curve.png").stat().st_size > 1000
    metadata, trained = load_mm(str(save))
    _, initial = load_mm(str(tmp_path / "mm"))
    assert metadata["iteration"] == 2 and metadata["backend"] == backend.name()
    assert set(trained) == set(initial)
    for name in trained:
        frozen = name.startswith("image_encoder.encoder.")
        assert np.array_equal(trained[name], initial[name]) == frozen, name
    assert os.path.exists(save / "config.json") and os.path.exists(save / "tokenizer.json")


def test_finetune_cli_reports_config_errors(tmp_path):
    config = _setup(tmp_path)
    result = CliRunner().invoke(main, ["finetune", "--config", config, "training.micro_batch=2"])
    assert result.exit_code != 0 and "training.micro_batch" in result.output and "micro_batch_size" in result.output
