"""Data parallel: the tiny training job (train_runner.py: per_token loss, global batch 4 of micro-batches of 1) launched
as 2 processes by this backend's launcher (torchrun with gloo / msrun, on CPU) gives the 1-process run's per-step
losses and final weights, writes one checkpoint and one log, and continues a 1-process checkpoint on the same curve;
so does ``fully_shard`` (torch FSDP2 / MindSpore's sharded AdamW state, each process holding half of it). A rank
whose micro-batches are all text-only still runs the vision encoder, in both modes, and the run equals 1 process.
Streaming data (each rank its own stream) resumes with every rank's position; a NaN names the samples and their ranks;
``mmx finetune`` on the tiny Qwen2.5-VL trains the same weights in 2 processes as in 1. A global batch that does not
split over the ranks and model-parallel sizes are refused with the fix.

One launch runs all 2-process jobs (the launcher's start-up is most of a 3-step job's time, ~30 s for msrun).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mmx import backend
from mmx.checkpoint import load_mm
from mmx.cli import main as mmx_command
from mmx.train import checkpoint
from mmx.train.config import ConfigError, load_config
from mmx.train.loop import Sampler, Trainer
from mmx.train.loss import loss_counts, token_weights
from tolerances import TRAIN_TOLERANCE
from train_reference import collate, make_dataset, make_model, random_weights
from test_cli import _mixed_setup as mixed_setup
from test_cli import _setup as cli_setup
from train_runner import BASE, train

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = {"train_iters": 3, "micro_batch_size": 1, "global_batch_size": 4, "loss_type": "per_token"}
SHARD = {"data_parallel": "fully_shard"}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(log_dir):
    """The command that starts 2 processes of a script with this backend's launcher."""
    if backend.name() == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [sys.executable, "-m", "mindspore.parallel.cluster.run", "--worker_num=2", "--local_worker_num=2",
            f"--master_port={_free_port()}", "--join=True", f"--log_dir={log_dir}"]


def _job(out, save, **options):
    return [out, save] + [f"{key}={value}" for key, value in dict(JOB, **options).items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-process runs (this process) and the 2-process jobs (one launch): paths and results."""
    root = tmp_path_factory.mktemp("dp")
    single_losses, single_weights, single = train(save=str(root / "single"), **JOB)
    first_losses, _, _ = train(save=str(root / "resume"), **dict(JOB, train_iters=2))
    train(save=str(root / "shard_from_single"), **dict(JOB, train_iters=2))
    # sample on rank 1 (micro-batch 1) at step 2
    nan_sample = Sampler(12, BASE["seed"]).indices(JOB["global_batch_size"], JOB["global_batch_size"])[1]
    cli_config = cli_setup(root / "cli")
    cli_args = ["finetune", "--backend", backend.name(), "--config", cli_config, "training.micro_batch_size=1",
                "training.loss_type=per_token"]
    result = CliRunner().invoke(mmx_command, cli_args + [f"training.save={root / 'cli_single'}"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    mixed_args = ["finetune", "--backend", backend.name(), "--config", mixed_setup(root / "mixed")]
    result = CliRunner().invoke(mmx_command, mixed_args + [f"training.save={root / 'mixed_single'}"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    # msrun starts its workers as `python`: the one of this interpreter
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", TQDM_DISABLE="1")
    command = (_launcher(str(root / "launch_logs")) + [os.path.join(HERE, "train_runner.py")]
               + _job(str(root / "dp.npz"), str(root / "dp")) + ["then"]
               + _job(str(root / "resumed.npz"), str(root / "resume"), load=str(root / "resume")) + ["then"]
               + _job(str(root / "stream.npz"), str(root / "stream"), streaming=True) + ["then"]
               + _job(str(root / "stream_a.npz"), str(root / "stream_part"), streaming=True, train_iters=2) + ["then"]
               + _job(str(root / "stream_b.npz"), str(root / "stream_part"), streaming=True,
                      load=str(root / "stream_part")) + ["then"]
               + _job(str(root / "nan.npz"), str(root / "nan"), nan_sample=nan_sample, save_interval=1) + ["then"]
               + _job(str(root / "shard.npz"), str(root / "shard"), **SHARD) + ["then"]
               + _job(str(root / "shard_part.npz"), str(root / "shard_part"), train_iters=2, **SHARD) + ["then"]
               + _job(str(root / "shard_from_single.npz"), str(root / "shard_from_single"),
                      load=str(root / "shard_from_single"), **SHARD) + ["then"]
               + ["cli"] + cli_args + [f"training.save={root / 'cli_dp'}"] + ["then"]
               + ["cli"] + mixed_args + [f"training.save={root / 'mixed_dp'}"] + ["then"]
               + ["cli"] + mixed_args + [f"training.save={root / 'mixed_shard'}", "training.data_parallel=fully_shard"]
               + ["then"]
               + ["cli"] + cli_args + [f"training.save={root / 'cli_stream'}", "data.streaming=true",
                                          "training.train_iters=1"])
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    logs = "".join(open(os.path.join(root / "launch_logs", name)).read()[-3000:]
                   for name in sorted(os.listdir(root / "launch_logs"))) if (root / "launch_logs").exists() else ""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
    return {"root": root, "single_losses": single_losses, "single_weights": single_weights,
            "single_records": single.logger.records, "first_losses": first_losses, "nan_sample": nan_sample}


def _load(path):
    data = np.load(path)
    return list(data["losses"]), {key[2:]: data[key] for key in data.files if key.startswith("w/")}


def _assert_close_curve(losses, reference):
    assert len(losses) == len(reference)
    for step, (got, want) in enumerate(zip(losses, reference)):
        assert abs(got - want) <= TRAIN_TOLERANCE["data_parallel_loss_rel"] * abs(want), (step, got, want)


def test_two_processes_train_like_one(runs):
    root = runs["root"]
    losses, weights = _load(root / "dp.rank0.npz")
    losses_1, weights_1 = _load(root / "dp.rank1.npz")
    _assert_close_curve(losses, runs["single_losses"])
    assert losses == losses_1
    for name, want in runs["single_weights"].items():
        assert np.array_equal(weights[name], weights_1[name]), f"{name} differs between the ranks"
        error = np.abs(weights[name] - want).max() / max(1.0, np.abs(want).max())
        assert error <= TRAIN_TOLERANCE["data_parallel_weights"], (name, error)
    initial = random_weights(make_model())  # the weights make_model loads: the run moved far beyond the tolerance
    moved = max(np.abs(weights[name] - initial[name]).max() for name in weights)
    assert moved > 100 * TRAIN_TOLERANCE["data_parallel_weights"], moved
    # one writer: one checkpoint tree, one log with one line per step and the tokens of both ranks
    save = root / "dp"
    assert sorted(name for name in os.listdir(save) if "iter_" in name) == ["iter_0000003"]
    assert checkpoint.read_latest(str(save)) == 3
    assert checkpoint.load_checkpoint(str(save))["trainer_state"]["world_size"] == 2
    records = [json.loads(line) for line in open(save / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["tokens"] for r in records] == [r["tokens"] for r in runs["single_records"]]
    assert (save / "loss_curve.png").exists()


def test_sharded_optimizer_state_trains_like_one_process(runs):
    """fully_shard (torch: FSDP2; MindSpore: the AdamW state split over the ranks): the 1-process curve and weights,
    the whole moments in the checkpoint, and checkpoints that continue across the modes and process counts."""
    root = runs["root"]
    losses, weights = _load(root / "shard.rank0.npz")
    _assert_close_curve(losses, runs["single_losses"])
    for name, want in runs["single_weights"].items():
        error = np.abs(weights[name] - want).max() / max(1.0, np.abs(want).max())
        assert error <= TRAIN_TOLERANCE["data_parallel_weights"], (name, error)
    got = checkpoint.load_checkpoint(str(root / "shard"))["optimizer"]
    want = checkpoint.load_checkpoint(str(root / "single"))["optimizer"]
    assert got["step"] == want["step"] == 3 and set(got["exp_avg"]) == set(want["exp_avg"])
    for kind in ("exp_avg", "exp_avg_sq"):
        for name, moment in want[kind].items():
            error = np.abs(got[kind][name] - moment).max() / max(np.abs(moment).max(), 1e-12)
            assert error <= TRAIN_TOLERANCE["fully_shard_moments_rel"], (kind, name, error)
    # a sharded 2-step checkpoint continued by 1 process, a 1-process one continued sharded: the same curve
    first, _ = _load(root / "shard_part.rank0.npz")
    last, _, _ = train(save=str(root / "shard_part"), load=str(root / "shard_part"), **JOB)
    _assert_close_curve(first + last, runs["single_losses"])
    continued, _ = _load(root / "shard_from_single.rank0.npz")
    _assert_close_curve(runs["first_losses"] + continued, runs["single_losses"])


@pytest.mark.backend("mindspore")
def test_mindspore_sharded_optimizer_state_halves(runs):
    """Each of the 2 MindSpore processes holds about half of the AdamW moments (measured on its optimizer), together
    exactly the whole (8 bytes per trainable parameter)."""
    whole = 8 * sum(value.size for value in runs["single_weights"].values())
    shares = [int(np.load(runs["root"] / f"shard.rank{rank}.npz")["local_state_bytes"]) for rank in (0, 1)]
    assert sum(shares) == whole, (shares, whole)
    assert max(shares) <= 0.6 * whole, (shares, whole)


def test_two_processes_continue_a_one_process_checkpoint(runs):
    resumed, _ = _load(runs["root"] / "resumed.rank0.npz")
    _assert_close_curve(runs["first_losses"] + resumed, runs["single_losses"])
    state = checkpoint.load_checkpoint(str(runs["root"] / "resume"))["trainer_state"]
    assert state["iteration"] == 3 and state["world_size"] == 2 and state["consumed_samples"] == 12


@pytest.mark.parametrize("mode", ["default", "per_token", "per_sample"])
def test_summed_rank_counts_give_every_micro_batch_its_single_process_weights(mode):
    """Each of 3 ranks weighs its share of 6 micro-batches (dealt k % 3; lengths and supervision differ, one packed
    row) with the counts summed over the ranks: bit-identical to the weights of the whole global batch."""
    samples = make_dataset(6, min_len=3, max_len=10)
    batches = [collate([sample]) for sample in samples]
    batches[4] = {"labels": np.array([[-100, 4, 5, 8, -100, 9]]), "cu_seqlens": np.array([0, 3, 6])}
    batches[5]["labels"][:] = -100  # a micro-batch with nothing supervised
    whole = token_weights(batches, mode)
    shares = [batches[rank::3] for rank in range(3)]
    summed = sum(loss_counts(share) for share in shares)
    assert summed.tolist() == loss_counts(batches).tolist()
    for rank, share in enumerate(shares):
        for got, want in zip(token_weights(share, mode, global_counts=summed), whole[rank::3]):
            assert np.array_equal(got, want), (mode, rank)


def test_global_batch_must_split_over_the_ranks(monkeypatch, tmp_path):
    monkeypatch.setattr(backend.get().distributed, "init", lambda: (0, 2))  # as rank 0 of 2, before any collective
    training = load_config(base={"training": dict(BASE, global_batch_size=6, micro_batch_size=2)})["training"]
    with pytest.raises(ConfigError, match=r"global_batch_size \(6\) must be a multiple of training\.micro_batch_size "
                                          r"\(2\) x the data-parallel size \(2 processes\) = 4.*set global_batch_size "
                                          r"to 4 or 8"):
        Trainer(make_model(), make_dataset(8), collate, training, log_dir=str(tmp_path))


def test_model_parallel_sizes_are_refused():
    assert load_config(base={"training": {"tensor_model_parallel_size": 1}})["training"]["train_iters"] > 0
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        with pytest.raises(ConfigError, match=f"training.{key}=2: mmx finetune trains data parallel only"):
            load_config(base={"training": {key: 2}})


def test_streaming_resume_restores_every_ranks_position(runs):
    root = runs["root"]
    full, _ = _load(root / "stream.rank0.npz")
    first, _ = _load(root / "stream_a.rank0.npz")
    resumed, _ = _load(root / "stream_b.rank0.npz")
    _assert_close_curve(first + resumed, full)
    state = checkpoint.load_checkpoint(str(root / "stream_part"))["trainer_state"]
    assert state["world_size"] == 2 and len(state["data_state"]) == 2  # one stream position per rank
    assert state["data_state"][0] != state["data_state"][1]
    with pytest.raises(ValueError, match="saved by 2 data-parallel processes and this run has 1"):
        train(save=str(root / "stream_one"), load=str(root / "stream_part"), streaming=True, **JOB)


def test_nan_names_the_samples_and_their_ranks(runs):
    root = runs["root"]
    messages = [open(root / f"nan.rank{rank}.txt").read() for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert messages[0].startswith("step 2: loss nan"), messages[0]
    assert f"sample-{runs['nan_sample']} (rank 1)" in messages[0], messages[0]
    assert messages[0].count("(rank 0)") == 2 and messages[0].count("(rank 1)") == 2
    assert messages[0].endswith(f"{os.path.join(str(root / 'nan'), 'iter_0000001')}"), messages[0]


def test_finetune_command_trains_the_same_in_two_processes(runs):
    single, dp = runs["root"] / "cli_single", runs["root"] / "cli_dp"
    _, want = load_mm(str(single))
    metadata, got = load_mm(str(dp))
    assert metadata["iteration"] == 2 and set(got) == set(want)
    for name in want:
        error = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert error <= TRAIN_TOLERANCE["data_parallel_weights"], (name, error)
    losses = [[json.loads(line)["loss"] for line in open(save / "logs" / "metrics.jsonl")] for save in (dp, single)]
    _assert_close_curve(*losses)
    assert sorted(os.listdir(dp)) == sorted(os.listdir(single))  # support files, one iteration, logs


@pytest.mark.parametrize("mode", ["mixed_dp", "mixed_shard"])
def test_a_rank_with_only_text_only_batches_trains_like_one_process(runs, mode):
    """Every micro-batch of rank 1 is text-only, rank 0's have images (test_cli._mixed_setup): the vision encoder
    still runs on rank 1 (a zero-weighted dummy image), so the gradient sums (replicate) and the sharded vision units'
    collectives (fully_shard) see the same calls on both ranks; the run completes with the 1-process curve and
    weights."""
    single, parallel = runs["root"] / "mixed_single", runs["root"] / mode
    _, want = load_mm(str(single))
    metadata, got = load_mm(str(parallel))
    assert metadata["iteration"] == 2 and set(got) == set(want)
    for name in want:
        error = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert error <= TRAIN_TOLERANCE["data_parallel_weights"], (name, error)
    _, initial = load_mm(str(runs["root"] / "mixed" / "mm"))
    name = "image_encoder.encoder.patch_embed.proj.weight"
    assert np.abs(got[name] - initial[name]).max() > 1e-4   # the images of rank 0 trained the vision encoder
    losses = [[json.loads(line)["loss"] for line in open(save / "logs" / "metrics.jsonl")]
              for save in (parallel, single)]
    _assert_close_curve(*losses)


def test_finetune_command_streams_a_shard_per_rank(runs):
    state = checkpoint.load_checkpoint(str(runs["root"] / "cli_stream"))["trainer_state"]
    assert state["world_size"] == 2 and len(state["data_state"]) == 2
    first, second = (rank_state["shards"] for rank_state in state["data_state"])
    assert first != second  # each rank read its own records (mmx.data's StreamingLoader with rank / world size)
