"""Runs are never lost, mixed or silently changed (issue 11): a save directory holding another run's checkpoint is
refused (training.overwrite keeps it until the new run's first checkpoint is complete), a resume that changes a
recorded setting is refused with the change named, every dropped sample is counted, checkpoints hold usable weights
only, and a training save SIGKILLed before any file-system step leaves the old or the new checkpoint, bit for bit,
on both backends."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mmx import backend
from mmx.train import checkpoint
from mmx.train.config import ConfigError
from mmx.train.loop import NonFiniteLossError
from train_runner import train

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERT_TESTS = os.path.join(HERE, "..", "convert")


def _metrics(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]


def _hidden_siblings(folder):
    parent, name = os.path.split(str(folder))
    return [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]


def test_save_dir_of_another_run_is_refused_and_overwrite_keeps_it_until_replaced(tmp_path):
    save = str(tmp_path / "save")
    _, old_weights, _ = train(save=save, train_iters=2)
    before = (_metrics(save), open(os.path.join(save, checkpoint.LATEST)).read())
    with pytest.raises(ConfigError, match=rf"training.save {save} already holds a checkpoint at iteration 2 .*"
                                          rf"training.load={save} to resume it, training.overwrite=true"):
        train(save=save, train_iters=4, seed=8)
    assert (_metrics(save), open(os.path.join(save, checkpoint.LATEST)).read()) == before
    assert np.array_equal(checkpoint.load_checkpoint(save)["model"]["text_decoder.output_layer.weight"],
                          old_weights["text_decoder.output_layer.weight"])
    # an overwriting run killed before its first checkpoint (a dead process's set-aside copy, a new directory with
    # only logs and a staging directory): the next start brings the old run back whole
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    os.rename(save, os.path.join(tmp_path, f".save.old-{pid}"))
    os.makedirs(os.path.join(save, f".iter_0000002.tmp-{pid}", "mp_rank_00"))
    with open(os.path.join(save, "metrics.jsonl"), "w") as handle:
        handle.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert checkpoint.read_latest(save) == 2 and _metrics(save) == before[0] and _hidden_siblings(save) == []
    assert np.array_equal(checkpoint.load_checkpoint(save)["model"]["text_decoder.output_layer.weight"],
                          old_weights["text_decoder.output_layer.weight"])
    # overwrite that completes: only the new run is left (its weights, its metrics), nothing set aside
    losses, new_weights, trainer = train(save=save, train_iters=2, seed=8, overwrite=True)
    fresh, fresh_weights, _ = train(save=str(tmp_path / "fresh"), train_iters=2, seed=8)
    assert any("set aside" in note for note in trainer.resume_notes)
    assert [r["loss"] for r in _metrics(save)] == losses == fresh
    assert sorted(n for n in os.listdir(save) if n.startswith("iter_")) == ["iter_0000002"]
    saved = checkpoint.load_checkpoint(save)["model"]
    assert all(np.array_equal(saved[name], fresh_weights[name]) for name in fresh_weights)
    assert not np.array_equal(saved["text_decoder.output_layer.weight"], old_weights["text_decoder.output_layer.weight"])
    assert _hidden_siblings(save) == []


def test_resume_with_changed_settings_is_refused_naming_each(tmp_path):
    save = str(tmp_path / "save")
    train(save=save, train_iters=2)
    with pytest.raises(ConfigError) as error:
        train(save=save, load=save, seed=8, global_batch_size=2, loss_type="per_sample", lr=1e-2)
    message = str(error.value)
    for change in ("seed 7 -> 8 (it reshuffles the sample order", "global_batch_size 4 -> 2", "loss_type 'per_token' "
                   "-> 'per_sample'", "lr 0.03 -> 0.01", "training.allow_changed=[seed,global_batch_size,loss_type,lr]",
                   "--allow-changed seed --allow-changed global_batch_size"):
        assert change in message, (change, message)
    assert checkpoint.read_latest(save) == 2
    losses, _, trainer = train(save=save, load=save, lr=1e-2, allow_changed=["lr"])
    assert "lr changed 0.03 -> 0.01 (training.allow_changed)" in trainer.resume_notes and len(losses) == 2
    # a checkpoint written before run_settings existed is still checked on the keys it recorded
    state_path = os.path.join(checkpoint.iteration_dir(save, 4), "trainer_state.json")
    state = json.load(open(state_path))
    del state["run_settings"]
    json.dump(state, open(state_path, "w"))
    with pytest.raises(ConfigError, match=r"seed 7 -> 9"):
        train(save=save, load=save, seed=9, train_iters=6)
    with pytest.raises(ConfigError, match=r"allow_changed names \['sed'\]"):
        train(save=save, load=save, allow_changed=["sed"])


def test_checkpoints_hold_usable_weights_only(tmp_path):
    """A huge learning rate gives weights of ~5e29 after step 1 with a finite loss and gradient norm: that state is
    not saved (the next forward squares them into inf), and the error says no good checkpoint exists."""
    save = str(tmp_path / "save")
    with pytest.raises(NonFiniteLossError) as error:
        train(save=save, lr=5e29, min_lr=0.0, lr_warmup_iters=0, save_interval=1, train_iters=3)
    message = str(error.value)
    assert message.startswith("iteration 1: the weights are unusable (") and "max |w| 5" in message
    assert message.endswith("Last good checkpoint: none saved")
    assert checkpoint.read_latest(save) is None and not [n for n in os.listdir(save) if n.startswith("iter_")]
    assert checkpoint.unusable_tensors({"w": np.float32([5e29])}) and not checkpoint.unusable_tensors(
        {"w": np.float32([1e19])}, {"exp_avg": {"w": np.float32([1.0])}, "exp_avg_sq": {"w": np.float32([1.0])}})
    assert checkpoint.unusable_tensors({"w": np.float32([1.0])}, {"exp_avg": {"w": np.float32([np.inf])}})


def test_killed_training_save_leaves_the_old_or_the_new_checkpoint(tmp_path):
    """SIGKILL before each file-system step of a training save of iteration 4 into a directory at iteration 2 (both
    swap modes), once as a new directory and once over a complete iter_0000004 the pointer never named (a run killed
    between its rename and its pointer, then resumed from 2); after the next start's recovery, load_checkpoint (what
    resume reads) returns iteration 2 or 4 with every tensor, moment, generator state and trainer-state value."""
    sys.path.insert(0, CONVERT_TESTS)
    from fault_runner import assert_old_or_new, fault_spec, run_faults

    reference, other = str(tmp_path / "reference"), str(tmp_path / "other")
    train(save=reference, save_interval=2)   # iterations 2 and 4 of this backend's trainer
    train(save=other, seed=8)                # another iteration 4
    assert checkpoint.load_checkpoint(reference)["metadata"]["backend"] == backend.name()
    old, orphan = tmp_path / "old", tmp_path / "orphan"
    shutil.copytree(reference, old, ignore=shutil.ignore_patterns("iter_0000004", "logs"))
    (old / checkpoint.LATEST).write_text("2\n")
    shutil.copytree(old, orphan)
    shutil.copytree(os.path.join(other, "iter_0000004"), orphan / "iter_0000004")
    args = {"save": tmp_path / "save", "payload": reference, "iteration": 4}
    new, replacing = run_faults(tmp_path, specs=[
        fault_spec(tmp_path / "new", "train_save", args, tmp_path / "save", old, "train"),
        fault_spec(tmp_path / "replacing", "train_save", args, tmp_path / "save", orphan, "train")])
    steps = assert_old_or_new(new, ("write", "fsync", "rename"), whole=False)
    assert steps["exchange"] == steps["rename"] >= 15, steps
    steps = assert_old_or_new(replacing, whole=False)
    assert steps["rename"] == steps["exchange"] + 1, steps


def test_finetune_counts_dropped_samples_and_names_the_fixes(tmp_path):
    """mmx finetune on a tiny Qwen2.5-VL: the drops in the summary and metrics, an empty dataset's reasons, another
    run's save directory refused, a changed seed refused and then allowed with --allow-changed."""
    from PIL import Image  # noqa: F401 - the digits need Pillow

    from mmx.cli import main
    from mmx.convert.drivers import hf_to_mm
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(str(tmp_path / "hf"), family="qwen2_5_vl")
    hf_to_mm(hf_dir, str(tmp_path / "mm"))
    digits = make_digits_vqa(str(tmp_path / "digits"), size=56, max_samples=10)
    records = json.load(open(digits["train"]))   # 8 digits (63 tokens each) ...
    records.insert(3, {"id": "long", "image": records[0]["image"], "conversations": [   # ... image past token 70
        {"from": "human", "value": "one " * 60 + "<image>What digit is this?"}, {"from": "gpt", "value": "3"}]})
    records.append({"id": "gone", "image": "images/missing.png", "conversations": [
        {"from": "human", "value": "<image>What digit is this?"}, {"from": "gpt", "value": "3"}]})
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    save = str(tmp_path / "save")
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps({
        "model": {"init_from_hf_path": str(tmp_path / "mm")},
        "data": {"dataset": str(data), "dataset_dir": digits["dataset_dir"], "skip_bad_samples": True,
                 "cutoff_len": 70},
        "training": {"train_iters": 2, "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3, "save": save,
                     "progress_bar": False, "peak_tflops": 1.0}}))
    runner = CliRunner()

    def finetune(*args):
        return runner.invoke(main, ["finetune", "--backend", backend.name(), "--config", str(config), *args])

    result = finetune()
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert ("data: 8 of 10 samples kept from 1 file; 2 dropped: 1 missing_media (skip_bad_samples), "
            "1 cut_through_image (cutoff_len 70)") in result.output
    records = _metrics(os.path.join(save, "logs"))
    assert records[0]["dropped_samples"] == {"total": 2, "by_kind": {"missing_media": 1, "cut_through_image": 1}}
    assert "dropped_samples" not in records[1]
    empty = finetune("data.cutoff_len=8", f"training.save={tmp_path / 'other'}")
    assert empty.exit_code == 2 and "Traceback" not in empty.output
    assert ("the training dataset is empty: all 10 samples of " in empty.output and
            "were dropped: 1 missing_media (skip_bad_samples), 9 cut_through_image (cutoff_len 8); first: "
            in empty.output), empty.output
    again = finetune()   # the same save directory without training.load: another run's checkpoint
    assert again.exit_code == 2 and f"training.save {save} already holds a checkpoint at iteration 2" in again.output
    changed = finetune(f"training.load={save}", "training.train_iters=3", "training.seed=9")
    assert changed.exit_code == 2 and "seed 1234 -> 9" in changed.output and "--allow-changed seed" in changed.output
    allowed = finetune(f"training.load={save}", "training.train_iters=3", "training.seed=9", "--allow-changed", "seed")
    assert allowed.exit_code == 0, allowed.output
    assert "resume: seed changed 1234 -> 9 (training.allow_changed)" in allowed.output
    assert [r["step"] for r in _metrics(os.path.join(save, "logs"))] == [1, 2, 3]
    # streaming, one record at a time: drops are counted as records are read; 12 samples take the 10 records once
    # and 4 of them again, so the long one is dropped twice
    stream_save = str(tmp_path / "stream")
    streamed = finetune("data.streaming=true", "data.buffer_size=1", "training.train_iters=3",
                        f"training.save={stream_save}")
    assert streamed.exit_code == 0, streamed.output
    logged = _metrics(os.path.join(stream_save, "logs"))
    counts = [r["dropped_samples"]["total"] for r in logged if "dropped_samples" in r]
    assert "dropped_samples" in logged[0] and counts == [1, 3], counts
    assert logged[-1]["dropped_samples"]["by_kind"] == {"missing_media": 1, "cut_through_image": 2}
    assert ("data: 3 samples dropped while streaming: 1 missing_media (skip_bad_samples), 2 cut_through_image "
            "(cutoff_len 70)") in streamed.output, streamed.output
