"""Expert parallel training (``training.expert_model_parallel_size``, mmx.expert_parallel) on the tiny Qwen3-VL-MoE
(4 experts, top-2, layer 1 MoE) through ``mmx finetune``: EP=2 in 2 processes (torch: all-to-all dispatch
over gloo; MindSpore: the all-gather dispatcher over msrun), and on torch EP=2 x DP=2 and EP=4 in 4 processes, give
the 1-process loss curve (1e-6 relative) and weights (1e-5) after 3 steps; the checkpoints hold the whole stacked
experts (same names and shapes as 1 process) and continue across EP sizes and backends (EP=2 -> 1 process of the
other backend, 1 process -> EP=2);
a rank whose micro-batches are all text-only completes under EP and equals 1 process; sizes that do not fit are
refused naming the key.

One launch per process count runs all its jobs (the launcher's start-up is most of a 3-step job's time).
"""
import json
import os
import shutil
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
from tolerances import TRAIN_TOLERANCE
from test_data_parallel import _free_port

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "train_runner.py")
EP = "training.expert_model_parallel_size"
FSDP = "training.data_parallel=fully_shard"
OTHER = {"torch": "mindspore", "mindspore": "torch"}


def _setup(root):
    """(config path, mixed config path): the tiny MoE's mm checkpoint and digits; the mixed config's samples are
    re-written so that, in 3 steps of global batch 2 (one epoch of the 6 samples, micro-batches of 1) by 2
    processes, rank 1's micro-batches are all text-only and rank 0's all have images."""
    from mmx.convert.drivers import hf_to_mm
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint
    from mmx.train.config import TRAINING_DEFAULTS
    from mmx.train.loop import Sampler

    hf_to_mm(make_tiny_checkpoint(str(root / "hf"), family="qwen3_vl_moe"), str(root / "mm"))
    digits = make_digits_vqa(str(root / "digits"), size=56, max_samples=8)
    config = {"model": {"init_from_hf_path": str(root / "mm")},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
              "training": {"train_iters": 3, "micro_batch_size": 1, "global_batch_size": 4, "lr": 1e-3,
                           "lr_decay_iters": 3,   # the schedule of 3 steps also in the 2-step runs resumed to 3
                           "loss_type": "per_token", "log_interval": 1, "progress_bar": False}}
    (root / "ft.json").write_text(json.dumps(config))
    records = json.loads(open(digits["train"]).read())
    for position, index in enumerate(Sampler(len(records), TRAINING_DEFAULTS["seed"]).indices(0, len(records))):
        if position % 2:   # micro-batch `position` goes to rank position % 2
            records[index].pop("image")
            turn = records[index]["conversations"][0]
            turn["value"] = turn["value"].replace("<image>", "")
    (root / "mixed.json").write_text(json.dumps(records))
    mixed = dict(config, data=dict(config["data"], dataset=str(root / "mixed.json")),
                 training=dict(config["training"], global_batch_size=2))
    (root / "mixed_ft.json").write_text(json.dumps(mixed))
    return str(root / "ft.json"), str(root / "mixed_ft.json")


def _launcher(root, processes):
    if backend.name() == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [sys.executable, "-m", "mindspore.parallel.cluster.run", f"--worker_num={processes}",
            f"--local_worker_num={processes}", f"--master_port={_free_port()}", "--join=True",
            f"--log_dir={root / f'launch_logs_{processes}'}"]


def _finetune(config, save, *options, backend_name=None):
    return ["finetune", "--backend", backend_name or backend.name(), "--config", config, f"training.save={save}",
            *options]


def _launch(root, processes, jobs):
    """Run the mmx command lines ``jobs`` one after the other in one launch of ``processes`` processes."""
    command = _launcher(root, processes) + [RUNNER]
    for k, job in enumerate(jobs):
        command += (["then"] if k else []) + ([] if job[0] == "shardload" else ["cli"]) + job
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", TQDM_DISABLE="1")
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=500)
    logs = root / f"launch_logs_{processes}"
    tails = "".join(open(logs / name).read()[-3000:] for name in sorted(os.listdir(logs))) if logs.exists() else ""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + tails


def _cli(args):
    result = CliRunner().invoke(mmx_command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def _first_two_steps(run, out):
    """``out``: a copy of checkpoint directory ``run`` as it was after step 2 (its iter_0000002, support files and
    LATEST = 2; no iter_0000003, no logs), to be continued to step 3."""
    out.mkdir()
    for name in os.listdir(run):
        if name == "iter_0000002" or (name != "logs" and not name.startswith("iter_")):
            (shutil.copytree if (run / name).is_dir() else shutil.copy)(run / name, out / name)
    (out / checkpoint.LATEST).write_text("2")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep")
    config, mixed = _setup(root)
    _cli(_finetune(config, root / "single", "training.save_interval=2"))
    _cli(_finetune(mixed, root / "mixed_single"))
    from_single = _first_two_steps(root / "single", root / "from_single")   # continued with EP=2
    jobs = [_finetune(config, root / "ep2", f"{EP}=2", "training.save_interval=2"),
            _finetune(config, from_single, f"{EP}=2", f"training.load={from_single}"),
            _finetune(mixed, root / "mixed_ep2", f"{EP}=2")]
    if backend.name() == "torch":   # EP with fully_shard (FSDP2): rank-local, and resumed from the 1-process run
        from_single_fsdp = _first_two_steps(root / "single", root / "from_single_fsdp")
        jobs += [_finetune(config, root / "ep2_fsdp", f"{EP}=2", FSDP, "training.save_interval=2"),
                 _finetune(config, from_single_fsdp, f"{EP}=2", FSDP, f"training.load={from_single_fsdp}")]
    _launch(root, 2, jobs)
    # the EP=2 checkpoint continued by one process of the other backend
    from_ep2 = _first_two_steps(root / "ep2", root / "from_ep2")
    other = OTHER[backend.name()]
    run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mmx"),
                          *_finetune(config, from_ep2, f"training.load={from_ep2}", backend_name=other)],
                         cwd=root, env=dict(os.environ, MMX_BACKEND=other, TQDM_DISABLE="1"), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    if backend.name() == "torch":
        _launch(root, 4, [_finetune(config, root / "ep2_dp2", f"{EP}=2"),
                          _finetune(config, root / "ep4", f"{EP}=4"),
                          _finetune(config, root / "ep2_dp2_fsdp", f"{EP}=2", FSDP),
                          ["shardload", str(root / "shards.npz"), str(root / "mm"), "2"]])
        # the EP=2 x fully_shard run's step-2 checkpoint continued by 1 process
        from_ep2_fsdp = _first_two_steps(root / "ep2_fsdp", root / "from_ep2_fsdp")
        _cli(_finetune(config, from_ep2_fsdp, f"training.load={from_ep2_fsdp}"))
    return root


def _curve(save):
    """{step: loss} of a run's metrics (a continued copy's: its own steps, then the original's before them)."""
    return {record["step"]: record["loss"] for record in map(json.loads, open(save / "logs" / "metrics.jsonl"))}


def _assert_same_run(got_dir, want_dir, steps, tolerance=TRAIN_TOLERANCE["expert_parallel_weights"], steps_run=None,
                     loss_tolerance=TRAIN_TOLERANCE["data_parallel_loss_rel"]):
    got, want = _curve(got_dir), _curve(want_dir)
    steps_run = steps_run or list(range(1, steps + 1))
    assert sorted(got) == steps_run and sorted(want) == list(range(1, steps + 1))
    for step in steps_run:
        assert abs(got[step] - want[step]) <= loss_tolerance * abs(want[step]), \
            (step, got[step], want[step])
    metadata, got_weights = load_mm(str(got_dir))
    _, want_weights = load_mm(str(want_dir))
    assert metadata["iteration"] == steps and set(got_weights) == set(want_weights)
    errors = {}
    for name, want_value in want_weights.items():
        assert got_weights[name].shape == want_value.shape and got_weights[name].dtype == want_value.dtype, name
        errors[name] = np.abs(got_weights[name] - want_value).max() / max(1.0, np.abs(want_value).max())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, (worst, errors[worst])
    return errors


# The 4-process runs are torch's (MindSpore's launch is the 2-process EP=2): deselected on MindSpore, not skipped.
# ep2_fsdp / ep2_dp2_fsdp: EP with fully_shard (torch FSDP2: the dense part over all ranks, each expert slice its own
# unit over the ranks holding it), rank-local loading.
@pytest.mark.parametrize("run", ["ep2"] + [pytest.param(run, marks=pytest.mark.backend("torch"))
                                           for run in ("ep2_dp2", "ep4", "ep2_fsdp", "ep2_dp2_fsdp")])
def test_expert_parallel_trains_like_one_process(runs, run):
    errors = _assert_same_run(runs / run, runs / "single", 3)
    experts = [name for name in errors if ".experts." in name]
    assert len(experts) == 2   # the MoE layer (layer 0 is dense): linear_fc1, linear_fc2, whole (4 experts)
    _, initial = load_mm(str(runs / "mm"))
    _, trained = load_mm(str(runs / run))
    assert all(trained[name].shape[0] == 4 for name in experts)
    # every expert of every layer trained (tokens reached the ranks holding them) far beyond the tolerance
    moved = min(np.abs(trained[name][e] - initial[name][e]).max() for name in experts for e in range(4))
    assert moved > 100 * TRAIN_TOLERANCE["expert_parallel_weights"], moved
    # the whole moments: the same as one process's
    got = checkpoint.load_checkpoint(str(runs / run))["optimizer"]
    want = checkpoint.load_checkpoint(str(runs / "single"))["optimizer"]
    assert got["step"] == want["step"] == 3 and set(got["exp_avg"]) == set(want["exp_avg"])
    for name in experts:
        assert got["exp_avg"][name].shape == want["exp_avg"][name].shape
        assert np.abs(got["exp_avg_sq"][name] - want["exp_avg_sq"][name]).max() <= 1e-6


def test_expert_parallel_checkpoints_continue_across_ep_sizes(runs):
    """The step-2 checkpoint of the EP=2 run continued by one process of the other backend, and the 1-process run's
    continued with EP=2: step 3 of the 3-step curve and its weights (whole tensors either way: checkpoints move
    between EP sizes and backends)."""
    assert sorted(_curve(runs / "from_single")) == [3]   # the continued run's own step
    _assert_same_run(runs / "from_single", runs / "single", 3, steps_run=[3])
    # the EP=2 run's step 2 continued by one process of the other backend: the other backend's rounding
    metadata = checkpoint.load_checkpoint(str(runs / "from_ep2"))["metadata"]
    assert metadata["backend"] == OTHER[backend.name()]
    _assert_same_run(runs / "from_ep2", runs / "single", 3, TRAIN_TOLERANCE["data_parallel_weights"], [3],
                     TRAIN_TOLERANCE["cross_backend_loss_rel"])


@pytest.mark.backend("torch")
def test_expert_parallel_with_fully_shard_checkpoints_continue(runs):
    """The EP=2 x fully_shard run's step-2 checkpoint (whole tensors, the 1-process layout) continued by 1 process,
    and the 1-process run's continued under EP=2 x fully_shard (whole load, experts cut, then sharded): step 3 of the
    3-step curve and its weights."""
    for continued in ("from_ep2_fsdp", "from_single_fsdp"):
        assert sorted(_curve(runs / continued)) == [3]
        _assert_same_run(runs / continued, runs / "single", 3, steps_run=[3])
    metadata, tensors = load_mm(str(runs / "ep2_fsdp"))
    _, single = load_mm(str(runs / "single"))
    assert metadata["parallel"]["ep_size"] == 1 and {name: value.shape for name, value in tensors.items()} == \
        {name: value.shape for name, value in single.items()}


@pytest.mark.backend("torch")
def test_expert_parallel_with_fully_shard_shards_experts_over_their_ranks(runs):
    """EP=2 x fully_shard in 4 processes, loaded as finetune does: every rank's shard of every parameter is exactly
    its rows of the checkpoint tensor, the 4 ranks' dense shards tile each dense tensor (FSDP over all ranks), each
    expert slice of 2 experts is split over the 2 ranks holding it (rank r: expert (r % 2) * 2 + r // 2), and each
    rank holds about a quarter of the model."""
    _, whole = load_mm(str(runs / "mm"))
    ranks = [np.load(runs / f"shards.rank{r}.npz") for r in range(4)]
    held = [0] * 4
    for name, tensor in whole.items():
        rows = []
        for r, shards in enumerate(ranks):
            local, row = shards[f"p/{name}"], int(shards[f"row/{name}"])
            assert np.array_equal(local, np.asarray(tensor, np.float32)[row:row + local.shape[0]]), (name, r)
            rows.append((row, local.shape[0]))
            held[r] += local.size
        if ".experts." in name:
            assert rows == [(0, 1), (2, 1), (1, 1), (3, 1)], (name, rows)
        else:   # the ranks' rows tile the tensor in rank order
            assert [row for row, _ in rows] == list(np.cumsum([0] + [n for _, n in rows])[:-1]), (name, rows)
            assert sum(n for _, n in rows) == tensor.shape[0], name
    total = sum(tensor.size for tensor in whole.values())
    assert sum(held) == total and max(held) <= 0.3 * total, (held, total)


def test_a_rank_with_only_text_only_batches_trains_under_expert_parallel(runs):
    """Rank 1's micro-batches are all text-only: the vision encoder still runs there (a zero-weighted dummy image)
    and both ranks dispatch the same MoE calls, so the EP=2 run completes with the 1-process curve and weights
    (within data parallel's weight tolerance: AdamW magnifies the rounding of the vision encoder's small gradients,
    which here come from rank 0's images alone; measured 1.7e-5 on torch)."""
    _assert_same_run(runs / "mixed_ep2", runs / "mixed_single", 3, TRAIN_TOLERANCE["data_parallel_weights"])


def test_expert_parallel_sizes_that_do_not_fit_are_refused(tmp_path):
    from mmx.expert_parallel import ExpertParallelError, setup

    with pytest.raises(ConfigError, match="expert_model_parallel_size 0 must be a positive integer"):
        load_config(base={"training": {"expert_model_parallel_size": 0}})
    with pytest.raises(ExpertParallelError, match=r"expert_model_parallel_size=2 must divide the 3 launched"):
        setup(None, {"expert_model_parallel_size": 2}, 0, 3, backend.get().distributed)
    assert setup(None, {"expert_model_parallel_size": 1}, 0, 1, backend.get().distributed) is None


def _expert_rows(name, array, ep_size, ep_rank):
    """The rows EP rank ``ep_rank`` of ``ep_size`` holds of checkpoint tensor ``name`` (every row of a dense one)."""
    if ".experts." not in name:
        return array
    per = array.shape[0] // ep_size
    return array[ep_rank * per:(ep_rank + 1) * per]


def test_rank_local_loading_fills_each_rank_with_its_own_experts(tmp_path):
    """``expert_parallel.load_rank_local`` (what ``mmx finetune`` runs under EP): a model built without storage
    gets, on each EP rank, exactly its rows of every stacked-expert tensor and every dense tensor whole, from a
    whole checkpoint, one split by ``--ep-size 2`` (EP=4 ranks read half of one file, EP=1 reads both) and a
    TP=2 x EP=4 one."""
    from mmx import models, nn, ops
    from mmx.checkpoint.store import MMSource
    from mmx.convert.drivers import hf_to_mm
    from mmx.expert_parallel import ExpertParallel, load_rank_local
    from mmx.tiny import make_tiny_checkpoint

    hf = make_tiny_checkpoint(str(tmp_path / "hf"), family="qwen3_vl_moe")
    layouts = {"whole": {}, "ep2": {"ep_size": 2}, "tp2_ep4": {"tp_size": 2, "ep_size": 4}}
    for name, layout in layouts.items():
        hf_to_mm(hf, str(tmp_path / name), **layout)
    _, whole = load_mm(str(tmp_path / "whole"))
    experts = sorted(name for name in whole if ".experts." in name)
    assert len(experts) == 2 and all(whole[name].shape[0] == 4 for name in experts)
    for layout in layouts:
        for ep_size in (1, 2, 4):
            for ep_rank in range(ep_size):
                with nn.empty_init():
                    model = models.build(str(tmp_path / "whole"))
                load_rank_local(model, MMSource(str(tmp_path / layout), streaming=True), ep_size, ep_rank)
                got = {name: ops.to_numpy(value) for name, value in nn.state_dict(model).items()}
                assert set(got) == set(whole)
                for name, value in whole.items():
                    want = _expert_rows(name, value, ep_size, ep_rank)
                    assert got[name].shape == want.shape and np.array_equal(got[name], want), \
                        (layout, ep_size, ep_rank, name)
                if ep_size == 2:   # the dispatcher keeps the loaded slices (no second cut) and knows the whole shapes
                    class Comm:
                        @staticmethod
                        def expert_groups(ep_size):
                            return None
                    parallel = ExpertParallel(Comm, ep_rank, 2, 2).shard(model)
                    assert parallel.num_experts == 4 and parallel.whole_shapes == \
                        {name: whole[name].shape for name in experts}
                    assert all(np.array_equal(ops.to_numpy(nn.state_dict(model)[name]),
                                              _expert_rows(name, whole[name], 2, ep_rank)) for name in experts)


# The load measured on a model whose experts are 98% of its bytes: 64 experts of 1024 in 2 MoE layers (100 MB).
BIG_MOE = dict(text_num_experts=64, text_moe_intermediate_size=1024, text_num_hidden_layers=3)


def test_rank_local_loading_reads_and_holds_only_this_ranks_experts(tmp_path):
    """One process per measurement (tests/train/ep_load_runner.py): EP=1 (the whole model) and rank 1 of EP=2 load
    the same checkpoint; the EP rank reads from the files only the dense bytes and its half of the experts (so it
    never holds the other rank's), holds exactly those, and its loading peak RSS above the start is at most 0.6x
    the whole load's and below its own bytes plus the other rank's experts (measured 2026-12-03: the whole model
    97.1 MiB, read 97.3 MiB, loading peak 129.2 MiB above the start on torch / 128.7 MiB on MindSpore; rank 1 of EP=2
    holds 49.1 MiB, reads 49.3 MiB, peak 65.2 / 64.6 MiB = 0.50x)."""
    from mmx.checkpoint.safetensors_io import nbytes
    from mmx.checkpoint.store import MMSource
    from mmx.convert.drivers import hf_to_mm
    from mmx.tiny import make_tiny_checkpoint

    hf_to_mm(make_tiny_checkpoint(str(tmp_path / "hf"), family="qwen3_vl_moe", **BIG_MOE), str(tmp_path / "mm"))
    entries = MMSource(str(tmp_path / "mm")).entries
    expert_bytes = sum(nbytes(*entry) for name, entry in entries.items() if ".experts." in name)
    dense_bytes = sum(nbytes(*entry) for name, entry in entries.items() if ".experts." not in name)
    assert expert_bytes > 50 * dense_bytes
    runner = os.path.join(HERE, "ep_load_runner.py")
    measured = {}
    for ep_size, ep_rank in ((1, 0), (2, 1)):
        run = subprocess.run([sys.executable, runner, str(tmp_path / "mm"), str(ep_size), str(ep_rank)],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        measured[ep_size] = json.loads(run.stdout.strip().splitlines()[-1])
    whole, half = measured[1], measured[2]
    assert whole["held_bytes"] == dense_bytes + expert_bytes and half["held_bytes"] == dense_bytes + expert_bytes // 2
    # bytes read: what it holds, plus at most 1 MiB (headers, the process's own small reads)
    for got in (whole, half):
        assert got["held_bytes"] <= got["read_bytes"] <= got["held_bytes"] + 2 ** 20, got
    whole_peak, half_peak = (got["load_peak"] - got["rss_before"] for got in (whole, half))
    assert half_peak <= 0.6 * whole_peak, (half_peak, whole_peak)
    assert half_peak < half["held_bytes"] + expert_bytes // 2, (half_peak, half["held_bytes"])


@pytest.mark.backend("mindspore")
def test_expert_parallel_with_fully_shard_is_refused_on_mindspore():
    """MindSpore's fully_shard (ZeRO-1: each parameter's moments on one rank, which sends the new weights to all)
    does not compose with expert slices, which differ between ranks: refused before any tensor is read."""
    from mmx.expert_parallel import ExpertParallelError, checked_size

    training = load_config(base={"training": {"expert_model_parallel_size": 2, "data_parallel": "fully_shard"}})
    with pytest.raises(ExpertParallelError, match="expert_model_parallel_size=2 with training.data_parallel: "
                                                  "fully_shard is not implemented on mindspore"):
        checked_size(training["training"], 2)


def test_dispatch_plan_and_expert_ranges():
    """The framework-free plan: assignments sorted by expert (stable), per-expert counts, rows per EP rank; rank e
    of EP holds the contiguous experts e*E/EP .. (the numbering of the EP checkpoint layouts)."""
    from mmx.expert_parallel import dispatch_plan, local_experts

    order, counts, send = dispatch_plan(np.array([[3, 0], [1, 3], [2, 0]]), 4, 2)
    assert order.tolist() == [1, 5, 2, 4, 0, 3] and counts.tolist() == [2, 1, 1, 2] and send.tolist() == [3, 3]
    assert [list(local_experts(8, 4, e)) for e in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
