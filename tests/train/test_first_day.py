"""A new user's first day (issue 19): every mistake of the list ends in one line naming the file / key / sample and
the fix, exit status 2, no traceback; ``--debug`` shows the traceback."""
import errno
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mmx.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Qwen2.5-VL HF dir, 6 digit images and a finetune config (no save: nothing to refuse)."""
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("first_day")
    hf_dir = make_tiny_checkpoint(str(root / "hf"), family="qwen2_5_vl")
    digits = make_digits_vqa(str(root / "digits"), size=56, max_samples=8)
    config = {"model": {"init_from_hf_path": hf_dir},
              "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"]},
              "training": {"train_iters": 1, "micro_batch_size": 2, "global_batch_size": 2, "lr": 1e-3,
                           "progress_bar": False, "peak_tflops": 1.0}}
    path = root / "finetune.json"
    path.write_text(json.dumps(config))
    return {"root": root, "hf": hf_dir, "config": str(path), "digits": digits}


def _one_line_error(result, *fragments):
    """exit 2, no traceback, and the last output line is one ``Error: ...`` line holding every fragment."""
    output = result.output.strip()
    assert result.exit_code == 2, output + repr(result.exception)
    assert "Traceback" not in output
    last = output.splitlines()[-1]
    assert last.startswith("Error: "), output
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_unknown_keys_have_did_you_mean_in_every_section(setup):
    config = setup["config"]
    _one_line_error(_invoke("finetune", "--config", config, "data.cutof_len=512"),
                    "finetune.json", "data.cutof_len", "did you mean 'cutoff_len'")
    _one_line_error(_invoke("finetune", "--config", config, "training.micro_batch=2"),
                    "training.micro_batch", "did you mean 'micro_batch_size'")
    _one_line_error(_invoke("finetune", "--config", config, "model.text_decoder.frezee=true"),
                    "model.text_decoder.frezee", "did you mean 'freeze'")
    _one_line_error(_invoke("finetune", "--config", config, "trainig.lr=1"), "'trainig'", "did you mean 'training'")


def test_wrong_value_types_and_schedule_name_the_key(setup):
    config = setup["config"]
    _one_line_error(_invoke("finetune", "--config", config, "training.lr=abc"), "training.lr", "'abc'", "number")
    _one_line_error(_invoke("finetune", "--config", config, "training.train_iters=ten"), "training.train_iters",
                    "integer")
    _one_line_error(_invoke("finetune", "--config", config, "training.min_lr=0.1"), "training.min_lr (0.1)",
                    "training.lr (0.001)", "lower min_lr")


def test_missing_and_non_utf8_datasets_fail_before_the_model_is_built(setup, tmp_path, monkeypatch):
    from mmx.train import finetune

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the dataset path was checked")

    monkeypatch.setattr(finetune, "build_model", never)
    monkeypatch.chdir(tmp_path)
    _one_line_error(_invoke("finetune", "--config", setup["config"], "data.dataset=data/nope.json"),
                    "data.dataset", str(tmp_path / "data" / "nope.json"), "does not exist")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(json.dumps([{"messages": [{"role": "user", "content": "caf\u00e9"},
                                                 {"role": "assistant", "content": "ok"}]}]).replace(
        "\\u00e9", "\u00e9").encode("latin1"))
    monkeypatch.undo()
    result = _invoke("finetune", "--config", setup["config"], f"data.dataset={latin1}")
    offset = latin1.read_bytes().index(bytes([0xE9]))
    _one_line_error(result, str(latin1), "not UTF-8", f"byte {offset}", "iconv")


def test_bad_sample_in_finetune_is_one_line_naming_it(setup, tmp_path):
    records = json.load(open(setup["digits"]["train"]))
    records[1]["conversations"][0]["value"] = "What digit is this?"   # the image has no <image> placeholder
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    _one_line_error(_invoke("finetune", "--config", setup["config"], f"data.dataset={bad}"),
                    str(bad), repr(records[1]["id"]))


def test_guide_style_data_json_as_the_data_section(setup, tmp_path):
    from mmx.data.config import load_data_config
    from mmx.train.config import load_config

    guide = {"dataset_param": {"dataset_type": "huggingface",
                               "preprocess_parameters": {"model_name_or_path": setup["hf"]},
                               "basic_parameters": {"dataset_dir": setup["digits"]["dataset_dir"],
                                                    "dataset": setup["digits"]["train"], "cutoff_len": 512}},
             "dataloader_param": {"shuffle": False}}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(guide))
    config = load_config(setup["config"], [f"data={path}"])
    assert config["data"] == guide
    data = load_data_config(config["data"])
    assert (data.cutoff_len, data.shuffle, data.dataset) == (512, False, (setup["digits"]["train"],))
    _one_line_error(_invoke("finetune", "--config", setup["config"], f"data={tmp_path / 'none.json'}"),
                    "none.json", "does not exist")


def test_data_check_on_a_messages_file(setup, tmp_path):
    records = [{"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(records))
    _one_line_error(_invoke("data", "check", "--config", str(path)), "is a dataset file",
                    "--model-name-or-path")
    result = _invoke("data", "check", "--config", str(path), "--model-name-or-path", setup["hf"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["samples"], summary["usable"], summary["text_only"], summary["bad"]) == (1, 1, 1, 0)


def test_verify_with_an_hf_dir_as_mm_dir(setup):
    _one_line_error(_invoke("verify", "--hf-dir", setup["hf"], "--mm-dir", setup["hf"]), "is not an mm checkpoint",
                    "mmx convert hf_to_mm")


def test_full_disk_is_one_line_and_debug_shows_the_traceback(setup, tmp_path, monkeypatch):
    from mmx.convert import drivers

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "mm" / "model.safetensors"))

    monkeypatch.setattr(drivers, "hf_to_mm", full)
    args = ["convert", "hf_to_mm", "--hf-dir", setup["hf"], "--mm-dir", str(tmp_path / "mm")]
    _one_line_error(_invoke(*args), str(tmp_path / "mm" / "model.safetensors"), "disk is full")
    debug = _invoke(*args, "--debug")
    assert debug.exit_code == 1 and isinstance(debug.exception, OSError) and debug.exception.errno == errno.ENOSPC
    config = _invoke("finetune", "--config", setup["config"], "training.lr=abc", "--debug")
    assert "training.lr" in str(config.exception) and config.exit_code == 1


def test_unknown_backend_in_the_environment(setup):
    env = dict(os.environ, MMX_BACKEND="pytorch")
    result = subprocess.run([sys.executable, "-c", "from mmx.cli import main; main()", "finetune", "--config",
                             setup["config"]], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: unknown backend 'pytorch' (did you mean 'torch'?): choose one of torch, mindspore (MMX_BACKEND env or "
        "--backend)")


def test_yaml_exponent_numbers_are_numbers(setup, tmp_path):
    """YAML 1.1 (PyYAML) reads `lr: 1e-5` as the string '1e-5'; it is the number a user means."""
    from mmx.train.config import load_config

    path = tmp_path / "x.yaml"
    path.write_text(f"model: {{init_from_hf_path: {setup['hf']}}}\ndata: {{dataset: a.json}}\n"
                    f"training: {{lr: 1e-5, min_lr: 1e-6, train_iters: 1e3}}\n")
    training = load_config(str(path))["training"]
    assert (training["lr"], training["min_lr"], training["train_iters"]) == (1e-5, 1e-6, 1000)
    assert isinstance(training["train_iters"], int)
