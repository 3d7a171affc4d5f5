"""``training.compile``: one torch.compile region per decoder layer / vision block (the plan's FULLY_SHARD_UNITS),
applied by the Trainer; the steps give eager's losses and weights (to 1e-5 relative). A backend without
``compile_regions`` refuses the key in one line, and a non-boolean value is a config error."""
import time

import numpy as np
import pytest

from mmx import backend, models
from mmx.models.qwen2_5_vl.plan import FULLY_SHARD_UNITS
from mmx.tiny import make_tiny_checkpoint
from mmx.train.config import ConfigError, load_config
from mmx.train.finetune import read_weights
from mmx.train.loop import Trainer, shard_unit_names

STEPS = 2


def _text_batch():
    """One text-only 2 x 12 batch, the same every step (one shape: each region compiles once)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 300, (2, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    labels = np.where(mask == 1, ids, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _train(hf_dir, tmp_path, compile_):
    model = models.build(hf_dir)
    models.load_mm_state(model, read_weights(hf_dir)[1])
    training = load_config(base={"training": {
        "micro_batch_size": 1, "global_batch_size": 1, "train_iters": STEPS, "lr": 1e-3, "save": None,
        "log_interval": 1, "progress_bar": False, "peak_tflops": 1.0, "compile": compile_}})["training"]
    batch = _text_batch()
    trainer = Trainer(model, [0, 1], lambda samples: batch, training, log_dir=str(tmp_path / str(compile_)),
                      shard_units=FULLY_SHARD_UNITS)
    start = time.perf_counter()
    records = trainer.run()
    ops = backend.get().ops
    weights = {name: ops.to_numpy(param) for name, param in trainer.named_params}
    regions = [trainer.model.get_submodule(name) for name in shard_unit_names(trainer.model, FULLY_SHARD_UNITS)]
    return [r["loss"] for r in records], weights, time.perf_counter() - start, regions


@pytest.mark.backend("torch")
def test_compiled_regions_train_like_eager(tmp_path):
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen2_5_vl")
    eager_losses, eager, eager_seconds, _ = _train(hf_dir, tmp_path, False)
    losses, weights, seconds, regions = _train(hf_dir, tmp_path, True)
    # nn.Module.compile in place: 3 vision blocks + 2 decoder layers, the parameter names unchanged
    assert len(regions) == 5 and all(region._compiled_call_impl is not None for region in regions)
    assert sorted(weights) == sorted(eager)
    print(f"compile adds {seconds - eager_seconds:.1f} s to {STEPS} steps (eager {eager_seconds:.1f} s)")
    assert len(losses) == STEPS
    assert np.allclose(losses, eager_losses, rtol=1e-5, atol=0), (losses, eager_losses)
    worst = max(float(np.abs(weights[k] - eager[k]).max() / max(np.abs(eager[k]).max(), 1e-12)) for k in eager)
    assert worst <= 1e-5, worst


def test_a_backend_without_compiled_regions_refuses_the_key(tmp_path, monkeypatch):
    if backend.get().NAME == "torch":   # MindSpore's own compile_regions refuses; on torch, one that would
        def refuse(model, names):
            raise ValueError("training.compile: true is not supported on the torch backend (no compiled regions "
                             "there yet); set training.compile: false")
        monkeypatch.setattr(backend.get().train, "compile_regions", refuse)
    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), "qwen2_5_vl")
    training = load_config(base={"training": {"micro_batch_size": 1, "global_batch_size": 1, "train_iters": 1,
                                              "save": None, "progress_bar": False, "compile": True}})["training"]
    with pytest.raises(ConfigError, match=r"^training\.compile: true is not supported on the \w+ backend.*"
                                          r"set training\.compile: false$"):
        Trainer(models.build(hf_dir), [0], lambda samples: _text_batch(), training, log_dir=str(tmp_path),
                shard_units=FULLY_SHARD_UNITS)


def test_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"training\.compile is 'yes': it must be true or false"):
        load_config(base={"training": {"compile": "yes"}})
