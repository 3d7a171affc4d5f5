"""What users of LLaMA-Factory / ms-swift / MindSpeed-MM reach for on their first day (issue 19): an eval split with
eval loss (data.val_size, training.eval_interval), epochs (training.num_train_epochs), save limits
(training.save_total_limit), the start-up summary, --iteration for export / inference, and a positional config."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.checkpoint import load_mm
from mmx.cli import main
from mmx.train.config import load_config
from mmx.train.evaluate import eval_loss, split_eval
from mmx.train.loop import Trainer
from test_tensorboard import read_scalars
from train_reference import collate, make_dataset, make_model
from train_runner import BASE


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Qwen2.5-VL HF dir, 6 digit images and a finetune config."""
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("first_day_run")
    hf_dir = make_tiny_checkpoint(str(root / "hf"), family="qwen2_5_vl")
    digits = make_digits_vqa(str(root / "digits"), size=56, max_samples=8)
    config = {"model": {"init_from_hf_path": hf_dir},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
              "training": {"train_iters": 2, "micro_batch_size": 1, "global_batch_size": 2, "lr": 1e-3,
                           "progress_bar": False, "peak_tflops": 1.0}}
    path = root / "finetune.yaml"
    path.write_text(json.dumps(config))   # JSON is YAML
    return {"root": root, "hf": hf_dir, "config": str(path)}


def _finetune(*args):
    result = CliRunner().invoke(main, ["finetune", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_eval_loss_is_the_training_loss_on_the_same_samples(tmp_path):
    """lr 0: the eval loss after step 1 on the 12 samples step 1 trained on equals that step's loss."""
    training = load_config(base={"training": dict(BASE, train_iters=1, global_batch_size=12, micro_batch_size=3,
                                                  lr=0.0, min_lr=0.0, weight_decay=0.0, lr_warmup_iters=0,
                                                  eval_interval=1)})["training"]
    dataset = make_dataset(12)
    trainer = Trainer(make_model(), dataset, collate, training, log_dir=str(tmp_path), eval_dataset=dataset)
    records = trainer.run()
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], "eval_loss" in r) for r in logged] == [(1, False), (1, True)]
    assert logged[1]["eval_samples"] == 12
    assert abs(logged[1]["eval_loss"] - records[0]["loss"]) < 1e-5, (logged[1]["eval_loss"], records[0]["loss"])
    assert abs(eval_loss(trainer, dataset)[0] - records[0]["loss"]) < 1e-5
    scalars = read_scalars(str(tmp_path / "tensorboard"))
    assert abs(scalars["eval/loss"][1] - logged[1]["eval_loss"]) < 1e-6
    assert trainer.logger.eval_curve() == ([1], [logged[1]["eval_loss"]])   # the points loss_curve.png draws
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_split_eval_is_seeded_and_refuses_an_empty_side():
    dataset = list(range(10))
    train, held = split_eval(dataset, 0.3, seed=5)
    again_train, again_held = split_eval(dataset, 3, seed=5)
    assert len(held) == 3 and held.indices == again_held.indices and train.indices == again_train.indices
    assert sorted(train.indices + held.indices) == list(range(10))
    assert split_eval(dataset, 0, seed=5) == (dataset, None)
    for bad in (0.01, 10, -1):
        with pytest.raises(ValueError, match="data.val_size"):
            split_eval(dataset, bad, seed=5)


def test_finetune_with_eval_split_epochs_summary_and_save_limit(setup, tmp_path):
    save = tmp_path / "save"
    output = _finetune(setup["config"], "data.val_size=2", "training.eval_interval=2", "training.num_train_epochs=1.5",
                       "training.save_interval=1", "training.save_total_limit=2", f"training.save={save}",
                       "model.image_encoder.vision_encoder.freeze=true")
    # 6 samples: 4 train + 2 eval; 1.5 epochs of 4 samples at 2 per step = 3 iterations
    assert ("run: 4 training samples + 2 eval (data.val_size); global batch 2 = micro-batch 1 x 2 accumulation steps "
            "x 1 process; 3 iterations = 1.50 epochs; eval every 2 iterations") in output
    _, initial = load_mm_or_hf(setup["hf"])
    frozen = sum(value.size for name, value in initial.items() if name.startswith("image_encoder.encoder."))
    assert f"frozen: {frozen:,} parameters in " in output
    logged = [json.loads(line) for line in open(save / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    evals = [r for r in logged if "eval_loss" in r]
    assert [(r["step"], r["eval_samples"]) for r in evals] == [(2, 2), (3, 2)]   # every 2 and at the end
    assert all(np.isfinite(r["eval_loss"]) for r in evals)
    assert f"eval step 2 | eval_loss {evals[0]['eval_loss']:.6f} | 2 samples" in output
    scalars = read_scalars(str(save / "logs" / "tensorboard"))
    assert {step: round(value, 5) for step, value in scalars["eval/loss"].items()} == {
        r["step"]: round(r["eval_loss"], 5) for r in evals}
    assert (save / "logs" / "loss_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000002", "iter_0000003"]   # newest 2 kept
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def load_mm_or_hf(path):
    from mmx.train.finetune import read_weights

    return read_weights(path)


def test_iteration_for_export_and_infer_and_positional_config(setup, tmp_path):
    save = tmp_path / "save"
    _finetune(setup["config"], "training.save_interval=1", f"training.save={save}", "training.lr=1e-2")
    _, first = load_mm(str(save), iteration=1)
    _, last = load_mm(str(save))
    assert any(not np.array_equal(first[name], last[name]) for name in first)
    runner = CliRunner()
    exported = runner.invoke(main, ["convert", "mm_to_hf", "--mm-dir", str(save), "--save-hf-dir",
                                    str(tmp_path / "hf1"), "--iteration", "1", "--no-progress"])
    assert exported.exit_code == 0, exported.output
    _, back = load_mm_or_hf(str(tmp_path / "hf1"))
    assert set(back) == set(first) and all(np.array_equal(back[name], first[name]) for name in first)
    missing = runner.invoke(main, ["convert", "mm_to_hf", "--mm-dir", str(save), "--save-hf-dir",
                                   str(tmp_path / "hf7"), "--iteration", "7", "--no-progress"])
    assert missing.exit_code == 2 and "--iteration 7" in missing.output and "it holds 1, 2" in missing.output
    prompt = ["--prompt", "What digit is this?", "--greedy", "--max-new-tokens", "4"]
    from_save = runner.invoke(main, ["infer", "--model", str(save), "--iteration", "1", *prompt])
    from_export = runner.invoke(main, ["infer", "--model", str(tmp_path / "hf1"), *prompt])
    assert from_save.exit_code == 0 and from_export.exit_code == 0, from_save.output + from_export.output
    assert from_save.stdout == from_export.stdout
    refused = runner.invoke(main, ["infer", "--model", setup["hf"], "--iteration", "1", *prompt])
    assert refused.exit_code == 2 and "is an HF checkpoint" in refused.output
    usage = runner.invoke(main, ["finetune", setup["config"], "stray"])
    assert usage.exit_code == 2 and "only section.key=value overrides follow" in usage.output


def test_mix_ratios_draw_each_files_share_from_the_training_split():
    from mmx.data.dataset import EncodedDataset
    from mmx.data.mixing import mix_indices, part_of

    dataset = EncodedDataset([list(range(10)), list(range(2))], stats={})
    mixed = mix_indices(dataset, list(range(12)), (1, 1), seed=3)
    first, second = [i for i in mixed if part_of(dataset, i) == 0], [i for i in mixed if part_of(dataset, i) == 1]
    assert len(first) == 6 and len(set(first)) == 6 and sorted(second) == [10, 10, 10, 11, 11, 11]
    assert mix_indices(dataset, list(range(12)), (1, 1), seed=3) == mixed
    held_out = {0, 1, 2, 10}
    train = [i for i in range(12) if i not in held_out]
    mixed = mix_indices(dataset, train, (3, 1), seed=3)
    assert not held_out & set(mixed) and len(mixed) == 8
    assert sorted(i for i in mixed if i >= 10) == [11, 11]   # round(1/4 * 8) = 2 draws of the one training sample


def test_finetune_mixes_two_files(setup, tmp_path):
    digits = json.load(open(json.loads(open(setup["config"]).read())["data"]["dataset"]))
    small = tmp_path / "small.json"
    small.write_text(json.dumps([dict(record, image=os.path.join(os.path.dirname(
        json.loads(open(setup["config"]).read())["data"]["dataset"]), record["image"])) for record in digits[:2]]))
    train = json.loads(open(setup["config"]).read())["data"]["dataset"]
    output = _finetune(setup["config"], f"data.dataset=[{train},{small}]", "data.mix_ratios=[1,3]",
                       "training.train_iters=1")
    assert "run: 8 training samples (data.mix_ratios: 2 + 6 per file);" in output
    refused = CliRunner().invoke(main, ["finetune", setup["config"], f"data.dataset=[{train},{small}]",
                                        "data.mix_ratios=[1]"])
    assert refused.exit_code == 2 and "mix_ratios has 1 weights for 2 dataset files" in refused.output


def test_eval_ranks_run_the_same_number_of_forwards(tmp_path):
    """Data parallel eval: each rank's chunks, padded with zero-weighted passes (a fully sharded model needs every
    rank in each forward); the padding adds nothing to the loss."""
    from types import SimpleNamespace

    from mmx.train.evaluate import Subset, eval_ranges

    assert [eval_ranges(7, 2, rank, 3) for rank in range(3)] == [[(0, 2), (6, 7)], [(2, 4), None], [(4, 6), None]]
    assert eval_ranges(4, 2, 0, 1) == [(0, 2), (2, 4)]
    training = load_config(base={"training": dict(BASE, micro_batch_size=1, global_batch_size=2)})["training"]
    dataset = make_dataset(3)
    trainer = Trainer(make_model(), dataset, collate, training, log_dir=str(tmp_path))
    alone = eval_loss(trainer, Subset(dataset, [1]))[0]
    identity = SimpleNamespace(all_reduce_numpy=lambda array: array)   # as if the other rank held nothing
    rank1 = SimpleNamespace(training=training, comm=identity, rank=1, world_size=2, collate=collate,
                            model=trainer.model, steps=trainer.steps, params=trainer.params)
    calls = []
    steps = SimpleNamespace(evaluate_loss=lambda fn, batches, *args: calls.append(len(batches)) or
                            trainer.steps.evaluate_loss(fn, batches, *args))
    rank1.steps = steps
    assert abs(eval_loss(rank1, dataset)[0] - alone) < 1e-6 and calls == [2]   # sample 1 + one padding pass
