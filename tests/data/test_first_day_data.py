"""A new user's data (issue 19): data convert detects the input layout and refuses a mismatch (or takes it with
--from auto), works without --model-dir when no box needs the processor, data check flags another format's image
tags, and one rule for relative media paths (relative to the file that names them, unless dataset_dir is set) holds
for convert, check, finetune's loader and batch inference."""
import json
import os

from click.testing import CliRunner

from data_helpers import write_image, write_json
from mmx.cli import main
from mmx.data.errors import BadSampleLog
from mmx.data.formats import load_samples

QWEN_VL = [
    {"id": "q0", "conversations": [{"from": "user", "value": "Picture 1: <img>imgs/a.png</img>\nWhat is it?"},
                                   {"from": "assistant", "value": "A square."}]},
    {"id": "q1", "conversations": [{"from": "user", "value": "Picture 1: <img>imgs/b.png</img>\nAnd this?"},
                                   {"from": "assistant", "value": "Another one."}]},
]
BOXED = [{"id": "box", "conversations": [
    {"from": "user", "value": "Picture 1: <img>imgs/a.png</img>\nFind the square"},
    {"from": "assistant", "value": "<ref>square</ref><box>(100,200),(500,1000)</box>"}]}]
LLAVA = [{"id": "l0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                          {"from": "gpt", "value": "A square."}]}]


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def _images(root):
    os.makedirs(root / "imgs", exist_ok=True)
    write_image(root / "imgs" / "a.png", 56, 84, seed=0)
    write_image(root / "imgs" / "b.png", 56, 56, seed=1)


def test_convert_refuses_a_layout_mismatch_and_detects_with_auto(tmp_path):
    _images(tmp_path)
    source = write_json(tmp_path / "qwen_vl.json", QWEN_VL)
    out = tmp_path / "out.json"
    refused = _invoke("data", "convert", "--from", "llava", "--input", source, "--output", str(out))
    assert refused.exit_code == 2 and not out.exists()
    assert refused.output.strip().splitlines()[-1] == (
        f"Error: {source}: --from llava, but 2 of 2 records look like Qwen-VL (<img>path</img> in the turns); use "
        f"--from qwen-vl (or --from auto)")
    llava = write_json(tmp_path / "llava.json", LLAVA)
    refused = _invoke("data", "convert", "--from", "qwen-vl", "--input", llava, "--output", str(out))
    assert refused.exit_code == 2 and "use --from llava" in refused.output
    # auto (the default): no box, so no --model-dir is needed whatever the target
    done = _invoke("data", "convert", "--input", source, "--output", str(out))
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary == {"converted": 2, "skipped": 0, "errors": [], "from": "qwen-vl", "target": "qwen2_5_vl"}
    records = json.loads(out.read_text())
    assert records[0]["messages"][0]["content"] == "<image>What is it?" and records[0]["images"] == ["imgs/a.png"]
    again = _invoke("data", "convert", "--input", str(out), "--output", str(tmp_path / "again.json"))
    assert again.exit_code == 2 and "nothing to convert" in again.output


def test_qwen_vl_boxes_take_the_model_dirs_target_and_name_their_pixels(tmp_path, model_dirs):
    _images(tmp_path)
    source = write_json(tmp_path / "boxed.json", BOXED)
    out = tmp_path / "boxed_out.json"
    needs = _invoke("data", "convert", "--input", source, "--output", str(out))
    assert needs.exit_code == 2 and "--model-dir" in needs.output and "--target qwen2_vl / qwen3_vl" in needs.output
    done = _invoke("data", "convert", "--input", source, "--output", str(out), "--model-dir",
                   model_dirs["qwen2_5_vl"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["target"] == "qwen2_5_vl" and summary["box_pixels"] == {"image_min_pixels": 56 * 56,
                                                                            "image_max_pixels": 56 * 84}
    assert "train with data.image_min_pixels: 3136 and data.image_max_pixels: 4704" in done.output
    # a 56x84 image stays 56x84 (multiple of 28, within max_pixels): x = round(n / 1000 * 84), y = round(n / 1000 * 56)
    answer = json.loads(out.read_text())[0]["messages"][1]["content"]
    assert json.loads(answer) == {"bbox_2d": [8, 11, 42, 56], "label": "square"}
    qwen3 = _invoke("data", "convert", "--input", source, "--output", str(tmp_path / "q3.json"), "--model-dir",
                    model_dirs["qwen3_vl"])
    assert qwen3.exit_code == 0 and json.loads(qwen3.output.strip().splitlines()[-1])["target"] == "qwen3_vl"


def test_data_check_flags_qwen_vl_tags_left_as_text(tmp_path, model_dirs):
    _images(tmp_path)
    source = write_json(tmp_path / "qwen_vl.json", QWEN_VL)
    result = _invoke("data", "check", "--config", source, "--model-name-or-path", model_dirs["qwen2_5_vl"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["samples"], summary["text_only"], summary["bad"], summary["foreign_image_tags"]) == (2, 2, 0, 2)
    assert (f"{source} sample 'q0': its text holds <img>...</img> (0 images placed by <image>); Qwen-VL's image "
            f"tags: convert the file with mmx data convert --from qwen-vl") in result.output


def test_one_relative_path_rule_for_convert_check_loader_and_infer(tmp_path, monkeypatch, model_dirs):
    from mmx.infer.batch import read_requests

    _images(tmp_path / "media")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")   # --image-dir is relative to the working directory, like any CLI path
    source = write_json(tmp_path / "llava.json", [dict(LLAVA[0], image="a.png")])
    out = tmp_path / "converted" / "train.json"
    done = _invoke("data", "convert", "--input", source, "--output", str(out), "--image-dir", "../media/imgs")
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())[0]["images"] == ["../media/imgs/a.png"]   # relative to the output's folder
    monkeypatch.chdir(tmp_path)   # elsewhere: the written paths do not depend on the working directory
    samples = load_samples(str(out), BadSampleLog(False))
    assert samples[0]["images"] == [str(tmp_path / "media" / "imgs" / "a.png")]
    checked = _invoke("data", "check", "--config", str(out), "--model-name-or-path", model_dirs["qwen2_5_vl"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output.strip().splitlines()[-1])["images"] == 1
    # dataset_dir set: it is the root instead
    log = BadSampleLog(True)
    assert load_samples(str(out), log, media_root=str(tmp_path / "a" / "b")) == []
    assert str(tmp_path / "a" / "media" / "imgs" / "a.png") in log.messages[0]   # dataset_dir replaced the folder
    # inference.json: relative to its own folder, even when the working directory has a file of that name
    (tmp_path / "cfg").mkdir()
    write_image(tmp_path / "cfg" / "view.png", 56, 56)
    write_image(tmp_path / "view.png", 56, 56, seed=3)
    config = tmp_path / "cfg" / "inference.json"
    config.write_text(json.dumps({"infer_data_type": "image", "file_path": "view.png", "prompts": "What?"}))
    requests, _ = read_requests(str(config))
    assert requests[0]["file_path"] == str(tmp_path / "cfg" / "view.png")


def test_pixel_boxes_are_checked_against_trainings_resize(tmp_path, model_dirs):
    from mmx.data import build

    _images(tmp_path)
    source = write_json(tmp_path / "boxed.json", BOXED)
    out = tmp_path / "boxed_out.json"
    done = _invoke("data", "convert", "--input", source, "--output", str(out), "--model-dir",
                   model_dirs["qwen2_5_vl"], "--image-max-pixels", str(56 * 56))
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())[0]["box_pixels"] == {"image_min_pixels": 56 * 56, "image_max_pixels": 56 * 56}
    data = {"dataset": str(out), "model_name_or_path": model_dirs["qwen2_5_vl"]}
    try:
        build(data)
        raise AssertionError("the mismatched resize was not refused")
    except ValueError as err:   # DataError: training resizes with the processor's max 56*84
        assert (f"{out} sample 'box': its boxes are pixels of images resized with image_max_pixels 3136, but "
                f"training resizes with image_max_pixels 4704; set data.image_max_pixels: 3136") in str(err)
    assert len(build(dict(data, image_max_pixels=56 * 56)).dataset) == 1
