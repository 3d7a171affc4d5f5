"""Freeze flags keep frozen parameters bit-identical; a NaN loss stops with the step and sample ids named and keeps
the last good checkpoint; config errors name the key and the fix."""
import numpy as np
import pytest

from mmx import nn, ops
from mmx.train import checkpoint
from mmx.train.config import ConfigError, load_config
from mmx.train.freeze import apply_freeze
from mmx.train.loop import NonFiniteLossError, Trainer
from tolerances import TRAIN_TOLERANCE
from train_reference import collate, make_dataset, make_model
from train_runner import BASE, train


def _training(**overrides):
    return load_config(base={"training": dict(BASE, **overrides)})["training"]


@pytest.mark.parametrize("flags, frozen_prefixes", [
    ({"image_encoder": {"vision_encoder": {"freeze": True}, "vision_projector": {"freeze": True}}},
     ("image_encoder.",)),
    ({"text_decoder": {"freeze": True}}, ("text_decoder.embedding.", "text_decoder.decoder.")),
    ({"text_decoder": {"lm_head": {"freeze": True}}}, ("text_decoder.output_layer.",)),
])
def test_frozen_parameters_stay_bit_identical(tmp_path, flags, frozen_prefixes):
    model = make_model()
    before = {name: ops.to_numpy(value).copy() for name, value in nn.state_dict(model).items()}
    config = load_config(base={"model": flags})
    frozen = apply_freeze(model, config["model"])
    assert frozen and all(name.startswith(frozen_prefixes) for name in frozen)
    assert len(frozen) == sum(name.startswith(frozen_prefixes) for name in before)
    trainer = Trainer(model, make_dataset(8), collate, _training(train_iters=2), log_dir=str(tmp_path))
    trainer.run()
    assert len(trainer.optimizer.state_dict()["exp_avg"]) == len(before) - len(frozen)
    after = {name: ops.to_numpy(value) for name, value in nn.state_dict(model).items()}
    for name in before:
        same = np.array_equal(before[name], after[name])
        assert same == (name in frozen), name


def test_nan_loss_stops_naming_step_and_samples(tmp_path):
    samples = make_dataset(12)  # 3 steps of 4 = one epoch: the planted sample is used at step 3 only
    trainer = Trainer(make_model(), samples, collate, _training(train_iters=6, save=str(tmp_path), save_interval=2))
    bad_positions = trainer.sampler.indices(2 * 4, 4)  # the samples of step 3
    samples[bad_positions[1]]["pixel_values"] = np.full_like(samples[bad_positions[1]]["pixel_values"], np.nan)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.run()
    message = str(error.value)
    assert "step 3" in message and samples[bad_positions[1]]["id"] in message
    assert "iter_0000002" in message
    assert trainer.iteration == 2 and checkpoint.read_latest(str(tmp_path)) == 2
    saved = checkpoint.load_checkpoint(str(tmp_path))["model"]
    for name, value in nn.state_dict(trainer.model).items():
        assert np.array_equal(ops.to_numpy(value), saved[name]), f"{name} changed by the skipped update"


def test_config_errors_name_key_and_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.lr_warmup_iter .*did you mean 'lr_warmup_iters'"):
        load_config(base={"training": {"lr_warmup_iter": 3}})
    with pytest.raises(ConfigError, match="comes from the checkpoint"):
        load_config(base={"model": {"hidden_size": 64}})
    with pytest.raises(ConfigError, match="multiple of training.micro_batch_size"):
        load_config(base={"training": {"global_batch_size": 6, "micro_batch_size": 4}})
    with pytest.raises(ConfigError, match=r"training\.host_memory 'cache': use auto, keep .* or release"):
        load_config(base={"training": {"host_memory": "cache"}})
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1.0e-3\n  train_iters: 5\nmodel:\n  text_decoder:\n    freeze: false\n")
    config = load_config(str(path), ["training.lr=2e-4", "model.text_decoder.freeze=true"])
    assert config["training"]["lr"] == 2e-4 and config["training"]["train_iters"] == 5
    assert config["model"]["text_decoder"]["freeze"] is True


@pytest.mark.backend("torch")
def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    fp32, _, _ = train(save=str(tmp_path / "fp32"), train_iters=2)
    bf16, weights, trainer = train(save=str(tmp_path / "bf16"), train_iters=2, precision="bf16")
    assert all(value.dtype == np.float32 for value in weights.values())
    assert all(str(param.dtype) == "torch.float32" for param in trainer.params)
    relative = [abs(a - b) / abs(b) for a, b in zip(bf16, fp32)]
    assert 0 < max(relative) <= TRAIN_TOLERANCE["bf16_vs_fp32_loss_rel"], relative  # bf16 really computed


@pytest.mark.backend("mindspore")
def test_mindspore_bf16_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="precision: fp32"):
        train(save=str(tmp_path), train_iters=1, precision="bf16")


def test_trainer_schedule_reads_warmup_fraction(tmp_path):
    trainer = Trainer(make_model(), make_dataset(4), collate,
                      _training(train_iters=200, lr_warmup_fraction=0.05, lr_warmup_iters=3), log_dir=str(tmp_path))
    assert trainer.schedule.warmup_iters == 10 and trainer.schedule(0) == pytest.approx(BASE["lr"] / 10)
