"""``mmx data check`` on a dataset with planted bad samples reports each one and ends with a JSON summary."""
import json

from click.testing import CliRunner

from data_helpers import write_image
from mmx.cli import main


def _conv(question, answer="ok"):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_check_reports_every_planted_bad_sample(tmp_path, model_dirs):
    write_image(tmp_path / "good.png", 56, 56)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video at all")
    lines = [
        json.dumps({"id": "good-image", "image": "good.png", "conversations": _conv("<image>What?")}),
        json.dumps({"id": "good-text", "conversations": _conv("Hi")}),
        '{"id": "broken-json", "conversations": [',
        json.dumps({"id": "missing-image", "image": "nowhere.png", "conversations": _conv("<image>What?")}),
        json.dumps({"id": "corrupt-image", "image": "corrupt.png", "conversations": _conv("<image>What?")}),
        json.dumps({"id": "corrupt-video", "video": "corrupt.mp4", "conversations": _conv("<video>What?")}),
        json.dumps({"id": "two-placeholders", "image": "good.png", "conversations": _conv("<image><image>?")}),
        json.dumps({"id": "too-long", "image": "good.png", "conversations": _conv("x " * 80 + "<image>")}),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "data.json").write_text(json.dumps({"dataset_param": {
        "preprocess_parameters": {"model_name_or_path": model_dirs["qwen2_5_vl"]},
        "basic_parameters": {"dataset_dir": str(tmp_path), "dataset": str(tmp_path / "train.jsonl"),
                             "cutoff_len": 80, "template": "qwen2vl"}}}))
    result = CliRunner().invoke(main, ["data", "check", "--config", str(tmp_path / "data.json")])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "train.jsonl:3: malformed JSON" in out
    assert "train.jsonl:4 sample 'missing-image': image " in out and "nowhere.png not found" in out
    assert "train.jsonl:5 sample 'corrupt-image': image " in out and "cannot be decoded" in out
    assert "train.jsonl:6 sample 'corrupt-video': video " in out
    assert "train.jsonl:7 sample 'two-placeholders': 2 <image> placeholder(s) in the text but 1 image" in out
    assert "train.jsonl:8 sample 'too-long':" in out and "cutoff_len 80" in out
    assert "note: dataset_param.basic_parameters.template is not used by mmx data" in out
    summary = json.loads(out.strip().splitlines()[-1])
    # images / videos / text-only count the records that parse (a missing file or a bad placeholder count fails
    # the parse): good-image, corrupt-image, too-long; corrupt-video; good-text
    assert (summary["samples"], summary["images"], summary["videos"], summary["text_only"]) == (8, 3, 1, 1)
    assert summary["bad"] == 5 and summary["dropped"] == 1 and summary["usable"] == 2
    assert summary["bad_by_kind"] == {"malformed_json": 1, "missing_media": 1, "corrupt_media": 2,
                                      "placeholder_mismatch": 1}
    assert summary["dropped_by_kind"] == {"cut_through_image": 1}
    assert summary["tokens"]["max"] <= 80 and summary["tokens"]["min"] > 10


def test_check_clean_dataset_exits_zero(tmp_path, model_dirs):
    (tmp_path / "d.json").write_text(json.dumps([{"id": "a", "conversations": _conv("Hi")}]))
    (tmp_path / "c.yaml").write_text(f"model_name_or_path: {model_dirs['qwen2_vl']}\ndataset: {tmp_path / 'd.json'}\n")
    result = CliRunner().invoke(main, ["data", "check", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["samples"], summary["bad"], summary["usable"]) == (1, 0, 1)
