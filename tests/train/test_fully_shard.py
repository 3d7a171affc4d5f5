"""Fully sharded data parallel (``training.data_parallel: fully_shard``): on torch, ``mmx finetune`` of the tiny
Qwen2.5-VL as 2 torchrun processes (gloo, CPU) with FSDP2 units from the model's plan (vision blocks, decoder layers)
gives the 1-process run's per-step losses, gradient norms (clipping active) and final weights, with gradient
accumulation (global batch 4 of micro-batches of 1: 2 per rank); its checkpoint holds the same whole tensors as the
1-process one, and checkpoints move between the modes in both directions on the same curve. (MindSpore's fully_shard,
the sharded AdamW state, is tested in test_data_parallel.py.) An unknown mode is a config error listing the choices.

One launch runs the 2-process jobs (train_runner.py ``cli`` jobs), the 1-process runs are in this process.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mmx import backend
from mmx.checkpoint import load_mm
from mmx.cli import main as mmx_command
from mmx.models.qwen2_5_vl.plan import FULLY_SHARD_UNITS
from mmx.train import checkpoint
from mmx.train.config import ConfigError, load_config
from mmx.train.loop import Trainer, shard_unit_names
from tolerances import TRAIN_TOLERANCE
from train_reference import collate, make_dataset, make_model
from test_cli import _setup as cli_setup
from train_runner import BASE

HERE = os.path.dirname(os.path.abspath(__file__))
# clip_grad below every step's norm (asserted), so the sharded norm and the clip both act on the update; the learning
# rate decays over 3 steps also in the 2-step runs that are resumed
JOB = ["training.micro_batch_size=1", "training.global_batch_size=4", "training.loss_type=per_token",
       "training.train_iters=3", "training.lr_decay_iters=3", "training.clip_grad=0.5"]
SHARD = ["training.data_parallel=fully_shard"]
FREEZE_VISION = "model.image_encoder.vision_encoder.freeze=true"


def _finetune(config, *overrides):
    return ["finetune", "--backend", backend.name(), "--config", config] + JOB + list(overrides)


def _run_here(args):
    result = CliRunner().invoke(mmx_command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _records(save):
    """The metrics.jsonl records of a save directory (a resumed run appends its steps)."""
    return [json.loads(line) for line in open(os.path.join(save, "logs", "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Save directories: 1-process runs (this process) and 2-process fully sharded ones (one torchrun launch)."""
    root = tmp_path_factory.mktemp("fsdp")
    config = cli_setup(root / "cli")
    saves = {name: str(root / name) for name in ("single", "single_part", "sharded", "sharded_part", "frozen_single",
                                                  "frozen_sharded")}
    _run_here(_finetune(config, f"training.save={saves['single']}"))
    _run_here(_finetune(config, f"training.save={saves['single_part']}", "training.train_iters=2"))
    _run_here(_finetune(config, f"training.save={saves['frozen_single']}", FREEZE_VISION))
    env = dict(os.environ, TQDM_DISABLE="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              os.path.join(HERE, "train_runner.py")]
    jobs = [_finetune(config, f"training.save={saves['sharded']}", *SHARD),
            _finetune(config, f"training.save={saves['sharded_part']}", "training.train_iters=2", *SHARD),
            # a 1-process (replicate) checkpoint continued fully sharded
            _finetune(config, f"training.save={saves['single_part']}", f"training.load={saves['single_part']}",
                      *SHARD),
            # frozen vision blocks (whole units) and a root unit holding a frozen patch embedding beside trainables
            _finetune(config, f"training.save={saves['frozen_sharded']}", FREEZE_VISION, *SHARD),
            # rank-local loading: each rank's shards as finetune loads them
            ["shardload", str(root / "shards.npz"), str(root / "cli" / "mm")]]
    command = launch + [arg for job in jobs for arg in (job if job[0] == "shardload" else ["cli"] + job) + ["then"]]
    command = command[:-1]
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    # a fully sharded checkpoint continued by 1 process
    output = _run_here(_finetune(config, f"training.save={saves['sharded_part']}",
                                 f"training.load={saves['sharded_part']}"))
    return dict(saves, launch_output=run.stdout + run.stderr, resume_output=output, root=str(root))


def _assert_same_curve(records, reference):
    assert [r["step"] for r in records] == [r["step"] for r in reference] == [1, 2, 3]
    for got, want in zip(records, reference):
        assert abs(got["loss"] - want["loss"]) <= TRAIN_TOLERANCE["fully_shard_loss_rel"] * abs(want["loss"]), \
            (got, want)


def _assert_same_weights(save, reference):
    _, got = load_mm(save)
    _, want = load_mm(reference)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        error = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert error <= TRAIN_TOLERANCE["fully_shard_weights"], (name, error)


@pytest.mark.backend("torch")
def test_two_sharded_processes_train_like_one(runs):
    sharded, single = _records(runs["sharded"]), _records(runs["single"])
    _assert_same_curve(sharded, single)
    for got, want in zip(sharded, single):
        assert want["grad_norm"] > 0.5  # the clip acted on every step
        tolerance = TRAIN_TOLERANCE["fully_shard_grad_norm_rel"] * want["grad_norm"]
        assert abs(got["grad_norm"] - want["grad_norm"]) <= tolerance, (got, want)
        assert got["tokens"] == want["tokens"]
    _assert_same_weights(runs["sharded"], runs["single"])
    # the same checkpoint: one iteration tree of whole tensors, whole AdamW moments, written by one process
    assert sorted(os.listdir(runs["sharded"])) == sorted(os.listdir(runs["single"]))
    got, want = checkpoint.load_checkpoint(runs["sharded"]), checkpoint.load_checkpoint(runs["single"])
    assert got["trainer_state"]["world_size"] == 2 and got["trainer_state"]["data_parallel"] == "fully_shard"
    assert got["optimizer"]["step"] == want["optimizer"]["step"] == 3
    for key in ("exp_avg", "exp_avg_sq"):
        assert set(got["optimizer"][key]) == set(want["optimizer"][key])
        for name, value in want["optimizer"][key].items():
            assert got["optimizer"][key][name].shape == value.shape, name
            error = np.abs(got["optimizer"][key][name] - value).max() / max(1e-30, np.abs(value).max())
            assert error <= TRAIN_TOLERANCE["fully_shard_moments_rel"], (key, name, error)


@pytest.mark.backend("torch")
def test_checkpoints_move_between_replicate_and_fully_shard(runs):
    # 2 steps in 1 process, the 3rd in 2 fully sharded ones; and the reverse
    for part in ("single_part", "sharded_part"):
        _assert_same_curve(_records(runs[part]), _records(runs["single"]))
        _assert_same_weights(runs[part], runs["single"])
    resumed = checkpoint.load_checkpoint(runs["single_part"])["trainer_state"]
    assert resumed["iteration"] == 3 and resumed["world_size"] == 2 and resumed["data_parallel"] == "fully_shard"
    resumed = checkpoint.load_checkpoint(runs["sharded_part"])["trainer_state"]
    assert resumed["iteration"] == 3 and resumed["world_size"] == 1 and resumed["data_parallel"] == "replicate"
    assert "resume: written by a replicate run, continued fully_shard" in runs["launch_output"]
    assert "resume: written by a fully_shard run, continued replicate" in runs["resume_output"]


@pytest.mark.backend("torch")
def test_frozen_vision_encoder_trains_the_same_sharded(runs):
    _assert_same_curve(_records(runs["frozen_sharded"]), _records(runs["frozen_single"]))
    _assert_same_weights(runs["frozen_sharded"], runs["frozen_single"])
    _, got = load_mm(runs["frozen_sharded"])
    _, initial = load_mm(os.path.join(os.path.dirname(runs["single"]), "cli", "mm"))
    frozen = [name for name in initial if name.startswith("image_encoder.encoder.")]
    assert frozen and all(np.array_equal(got[name], initial[name]) for name in frozen)
    assert not np.array_equal(got["image_encoder.projector.encoder.linear_fc1.weight"],
                              initial["image_encoder.projector.encoder.linear_fc1.weight"])


@pytest.mark.backend("torch")
def test_each_rank_loads_only_its_own_rows(runs):
    """Rank-local loading (finetune under fully_shard): each rank's shard of every parameter holds exactly its rows of
    the checkpoint tensor, the two ranks' rows tile it, and each rank holds about half of the model."""
    _, whole = load_mm(os.path.join(runs["root"], "cli", "mm"))
    ranks = [np.load(os.path.join(runs["root"], f"shards.rank{r}.npz")) for r in range(2)]
    held = [0, 0]
    for name, tensor in whole.items():
        covered = 0
        for r, shards in enumerate(ranks):
            local, row = shards[f"p/{name}"], int(shards[f"row/{name}"])
            assert row == covered, (name, r, row)
            assert np.array_equal(local, np.asarray(tensor, np.float32)[row:row + local.shape[0]]), (name, r)
            covered += local.shape[0]
            held[r] += local.size
        assert covered == tensor.shape[0], name
    total = sum(tensor.size for tensor in whole.values())
    assert held[0] + held[1] == total and max(held) <= 0.55 * total, (held, total)


def test_shard_units_come_from_the_plan():
    """The plan's patterns name every decoder layer (the test model has no vision blocks), nothing else."""
    model = make_model(num_layers=3)
    assert shard_unit_names(model, FULLY_SHARD_UNITS) == [f"text_decoder.decoder.layers.{j}" for j in range(3)]
    assert shard_unit_names(model, ()) == []


def test_unknown_data_parallel_mode_is_refused():
    with pytest.raises(ConfigError, match=r"training.data_parallel 'zero3': use replicate .* or fully_shard"):
        load_config(base={"training": {"data_parallel": "zero3"}})
